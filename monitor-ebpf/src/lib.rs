//! Empty library target: monitor-daemon lists this crate as a build-dependency so that cargo
//! rebuilds the daemon (and re-embeds the kernel object) when the programs change.
#![no_std]
