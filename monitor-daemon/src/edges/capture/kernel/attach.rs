//! Attaching the classifier to an interface: TCX links where the kernel has them, else a clsact
//! qdisc (added if missing, removed again when ours) and netlink filters; and finding
//! interfaces by name. What attaching failed on is said with what to do.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use aya::programs::links::LinkOrder;
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType};
use monitor_common::CLASSIFIER_PROGRAM;

use super::{AttachMethod, KernelProbe, ProbeError, is_permission, program_os_error};

impl KernelProbe {
    /// Attaches the classifier to `interface`'s ingress and egress, in the calling thread's
    /// network namespace, as [`ProbeConfig::attach`] says: TCX links, or a clsact qdisc and
    /// netlink filters. A clsact qdisc the probe had to add is removed again when it is dropped;
    /// one that existed before is left alone. Needs CAP_NET_ADMIN and CAP_BPF.
    pub fn attach(&mut self, interface: &str) -> Result<(), ProbeError> {
        if !interface_exists(interface) {
            return Err(ProbeError::UnknownInterface {
                interface: interface.to_owned(),
            });
        }
        let method = self.attach_method;
        if method == AttachMethod::Netlink {
            self.netlink_used = true;
            self.add_clsact(interface);
        }
        for (attach_type, direction) in [
            (TcAttachType::Ingress, "ingress"),
            (TcAttachType::Egress, "egress"),
        ] {
            let attached = match method {
                AttachMethod::Tcx => attach_tcx(self.classifier()?, interface, attach_type)
                    .map_err(|tcx| attach_error(interface, direction, "TCX", tcx)),
                AttachMethod::Netlink => attach_netlink(self.classifier()?, interface, attach_type)
                    .map_err(|netlink| {
                        netlink_refused(interface, direction, &netlink, || {
                            "capture.tc_attach = \"netlink\"".to_owned()
                        })
                        .unwrap_or_else(|| attach_error(interface, direction, "netlink", netlink))
                    }),
                AttachMethod::Auto => {
                    match attach_tcx(self.classifier()?, interface, attach_type) {
                        Ok(link) => Ok(link),
                        Err(tcx) if program_os_error(&tcx).is_some_and(is_permission) => {
                            Err(attach_error(interface, direction, "TCX", tcx))
                        }
                        // Older kernels (or TCX refused): classic clsact + netlink filter.
                        Err(tcx) => {
                            self.netlink_used = true;
                            self.add_clsact(interface);
                            attach_netlink(self.classifier()?, interface, attach_type).map_err(
                                |netlink| {
                                    netlink_refused(interface, direction, &netlink, || {
                                        format!("TCX failed: {tcx}; TCX links need Linux 6.6")
                                    })
                                    .unwrap_or_else(|| {
                                        ProbeError::Attach {
                                            interface: interface.to_owned(),
                                            direction,
                                            tcx: Box::new(tcx),
                                            netlink: Box::new(netlink),
                                        }
                                    })
                                },
                            )
                        }
                    }
                }
            };
            self.links.push(attached?);
        }
        Ok(())
    }

    fn classifier(&mut self) -> Result<&mut SchedClassifier, ProbeError> {
        self.ebpf
            .program_mut(CLASSIFIER_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(ProbeError::MissingFromObject {
                what: "TC classifier api_flow_classifier",
            })
    }

    /// Adds a clsact qdisc to `interface` unless it has one, remembering it only if it is ours.
    /// Errors are not reported here: the netlink filter attach that follows names them.
    fn add_clsact(&mut self, interface: &str) {
        let Some(ifindex) = interface_index(interface) else {
            return;
        };
        if self.clsact.iter().any(|q| q.ifindex == ifindex) {
            return;
        }
        // Opened before the qdisc is added, so that removal reaches this namespace whichever
        // thread (or namespace) drops the probe.
        let socket = match route_socket() {
            Ok(socket) => socket,
            // Netlink refused altogether: the attach that follows fails and says why.
            Err(err) if err.raw_os_error() == Some(libc::EAFNOSUPPORT) => return,
            Err(err) => {
                let _ = tc::qdisc_add_clsact(interface);
                tracing::warn!(%interface, %err, "no netlink socket: a clsact qdisc the probe adds will stay after it stops");
                return;
            }
        };
        // The add is exclusive: EEXIST means the qdisc was there before and is not ours.
        if tc::qdisc_add_clsact(interface).is_ok() {
            self.clsact.push(OwnedClsact { socket, ifindex });
        }
    }
}

fn attach_tcx(
    program: &mut SchedClassifier,
    interface: &str,
    attach_type: TcAttachType,
) -> Result<SchedClassifierLink, ProgramError> {
    let link = program.attach_with_options(
        interface,
        attach_type,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    )?;
    program.take_link(link)
}

fn attach_netlink(
    program: &mut SchedClassifier,
    interface: &str,
    attach_type: TcAttachType,
) -> Result<SchedClassifierLink, ProgramError> {
    remove_stale_filters(interface, attach_type);
    let link = program.attach_with_options(
        interface,
        attach_type,
        TcAttachOptions::Netlink(NlOptions::default()),
    )?;
    program.take_link(link)
}

/// Netlink filters outlive a process that crashed: a run that did not exit cleanly left its
/// classifier attached, and a second copy would report every call twice. One daemon owns an
/// interface, so any filter with the classifier's name is a leftover and is removed.
fn remove_stale_filters(interface: &str, attach_type: TcAttachType) {
    match tc::qdisc_detach_program(interface, attach_type, CLASSIFIER_PROGRAM) {
        Ok(()) => tracing::warn!(
            %interface,
            direction = ?attach_type,
            "removed a classifier an earlier run left attached (it did not exit cleanly)"
        ),
        Err(tc::TcError::IoError(err)) if err.kind() == io::ErrorKind::NotFound => {}
        // The attach that follows reports what is wrong with the interface or the privileges.
        Err(err) => tracing::debug!(%interface, %err, "could not look for leftover classifiers"),
    }
}

/// The netlink attach's error when the socket family itself was refused (`EAFNOSUPPORT`: the
/// unit's `RestrictAddressFamilies=`), said with the drop-in that allows it.
fn netlink_refused(
    interface: &str,
    direction: &'static str,
    netlink: &ProgramError,
    reason: impl FnOnce() -> String,
) -> Option<ProbeError> {
    (program_os_error(netlink) == Some(libc::EAFNOSUPPORT)).then(|| ProbeError::NetlinkRefused {
        interface: interface.to_owned(),
        direction,
        reason: reason(),
    })
}

fn attach_error(
    interface: &str,
    direction: &'static str,
    method: &'static str,
    source: ProgramError,
) -> ProbeError {
    match program_os_error(&source).filter(|&e| is_permission(e)) {
        Some(errno) => ProbeError::MissingPrivilege {
            action: "attach the TC classifier",
            capabilities: "CAP_NET_ADMIN and CAP_BPF",
            source: io::Error::from_raw_os_error(errno),
        },
        None => ProbeError::AttachWith {
            interface: interface.to_owned(),
            direction,
            method,
            source: Box::new(source),
        },
    }
}

/// A clsact qdisc this probe added, deleted on drop (with any filters still on it). The route
/// netlink socket was opened in the namespace the qdisc lives in.
pub(super) struct OwnedClsact {
    socket: OwnedFd,
    ifindex: u32,
}

impl Drop for OwnedClsact {
    fn drop(&mut self) {
        match delete_clsact(&self.socket, self.ifindex) {
            // Gone with its interface (or removed by an admin): nothing left to do.
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ENODEV | libc::ENOENT | libc::EINVAL)
                ) => {}
            Err(err) => {
                tracing::warn!(ifindex = self.ifindex, %err, "could not remove the clsact qdisc the probe added")
            }
            Ok(()) => {}
        }
    }
}

fn route_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before it is owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `tc qdisc del dev <ifindex> clsact`, as one RTM_DELQDISC request, waiting for its ack.
fn delete_clsact(socket: &OwnedFd, ifindex: u32) -> io::Result<()> {
    const TC_H_CLSACT: u32 = 0xFFFF_FFF1; // parent: the ingress/clsact slot
    const CLSACT_HANDLE: u32 = 0xFFFF_0000; // ffff:
    const TCA_KIND: u16 = 1;
    const KIND: &[u8] = b"clsact\0";
    // nlmsghdr (16) + tcmsg (20) + TCA_KIND attribute (4 + 7, padded to 12).
    const LEN: usize = 48;
    let mut request = [0u8; LEN];
    let header = 16;
    let attr = header + 20;
    request[0..4].copy_from_slice(&(LEN as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&libc::RTM_DELQDISC.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    request[6..8].copy_from_slice(&flags.to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    request[header] = libc::AF_UNSPEC as u8;
    request[header + 4..header + 8].copy_from_slice(&ifindex.to_ne_bytes());
    request[header + 8..header + 12].copy_from_slice(&CLSACT_HANDLE.to_ne_bytes());
    request[header + 12..header + 16].copy_from_slice(&TC_H_CLSACT.to_ne_bytes());
    request[attr..attr + 2].copy_from_slice(&((4 + KIND.len()) as u16).to_ne_bytes());
    request[attr + 2..attr + 4].copy_from_slice(&TCA_KIND.to_ne_bytes());
    request[attr + 4..attr + 4 + KIND.len()].copy_from_slice(KIND);
    // SAFETY: sends `request.len()` bytes from a live buffer on an open socket.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel handles the request inside send() and queues the ack (an nlmsgerr: header,
    // then the error code, 0 for success); never block in Drop waiting for it.
    let mut reply = [0u8; 1024];
    // SAFETY: receives into a live buffer of the given length.
    let got = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let reply = reply.get(..got as usize).unwrap_or_default();
    let kind = reply.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let code = reply
        .get(16..20)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match (kind, code) {
        (Some(k), Some(0)) if k == libc::NLMSG_ERROR as u16 => Ok(()),
        (Some(k), Some(code)) if k == libc::NLMSG_ERROR as u16 => {
            Err(io::Error::from_raw_os_error(code.saturating_neg()))
        }
        _ => Err(io::Error::other("unexpected netlink reply")),
    }
}

fn interface_index(interface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(interface).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

pub(crate) fn interface_exists(interface: &str) -> bool {
    interface_index(interface).is_some()
}
