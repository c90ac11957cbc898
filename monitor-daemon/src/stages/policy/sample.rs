//! Made-up verdicts for the tests of the policy and of what comes after it (enforcement,
//! certification, telemetry, the admin API), so that each does not build its own and a new
//! field of [`Verdict`] is filled in one place: a compliant one around a call of
//! [`crate::stages::redcap::sample`], and one that broke the per-minute rule.

use super::{Verdict, Violation};
use crate::shared::model::Span;
use crate::stages::redcap::ApiCall;
use crate::stages::redcap::sample::{at, call, fingerprint};

/// `call`, judged compliant.
pub(crate) fn compliant(call: ApiCall) -> Verdict {
    Verdict {
        call,
        heavy: None,
        violations: Vec::new(),
        client_violation: None,
        decision: None,
        while_suspended: false,
    }
}

/// Token `n`'s call at `secs`, its fourth within a minute where three are allowed.
pub(crate) fn violating(n: u8, secs: u64) -> Verdict {
    let mut verdict = compliant(call(n, secs));
    verdict.violations.push(Violation {
        ts: at(secs),
        token: fingerprint(n),
        rule: "api_calls".into(),
        limit: 3,
        window: Span::from_secs(60),
        count: 4,
    });
    verdict
}
