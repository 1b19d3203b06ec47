//! The SCIM target's side of a dry run, as text.

use serde_json::json;

use super::Out;
use crate::app::Sweep;
use crate::delivery::scim::{Takeover, Unmanaged, LISTED};
use crate::exit;

const SHOWN: usize = 20;

fn user_line(u: &Unmanaged) -> String {
    format!(
        "    user {} ({}){}",
        u.id,
        u.user_name.as_deref().unwrap_or("?"),
        u.external_id
            .as_deref()
            .map(|x| format!(", externalId {x}"))
            .unwrap_or_default()
    )
}

/// The SCIM target's side of a dry run: what delivery would do with the
/// users it already holds.
pub(super) fn takeover_out(t: &Takeover, o: &mut Out) {
    say!(
        o,
        "SCIM target ({} users there): {} to create, {} to adopt, {} conflicts, {} already linked, {} not managed by afas-sync",
        t.users_at_target,
        t.create,
        t.adopt,
        t.conflicts,
        t.linked,
        t.unmanaged
    );
    let more = |o: &mut Out, shown: usize, all: u64| {
        if (shown as u64) < all {
            say!(
                o,
                "    … and {} more (--json lists up to {})",
                all - shown as u64,
                LISTED
            );
        }
    };
    if t.adopt > 0 {
        say!(
            o,
            "  to adopt (the user gets the employee's externalId and every mapped attribute):"
        );
        for a in t.adoptions.iter().take(SHOWN) {
            say!(
                o,
                "    employee {} → user {} ({}), matched by {}",
                a.key,
                a.id,
                a.user_name.as_deref().unwrap_or("?"),
                a.rule
            );
        }
        more(o, t.adoptions.len().min(SHOWN), t.adopt);
    }
    if t.conflicts > 0 {
        say!(o, "  conflicts (not delivered until resolved):");
        for c in t.conflict_list.iter().take(SHOWN) {
            say!(o, "    employee {}: {}", c.key, c.reason);
        }
        more(o, t.conflict_list.len().min(SHOWN), t.conflicts);
    }
    if t.unmanaged > 0 {
        say!(
            o,
            "  not managed by afas-sync (no employee matches them; often people who left before afas-sync was installed):"
        );
        for u in t.unmanaged_list.iter().take(SHOWN) {
            say!(o, "{}", user_line(u));
        }
        more(o, t.unmanaged_list.len().min(SHOWN), t.unmanaged);
        let active = t.unmanaged_active;
        if t.deactivate && active > 0 {
            say!(
                o,
                "  sink.scim.unmanaged = \"deactivate\": the {active} active ones are deactivated once every change is delivered (within the leaver guards; above them `afas-sync unmanaged --deactivate {active}` confirms)"
            );
        } else if active > 0 {
            say!(
                o,
                "  sink.scim.unmanaged = \"keep\": they stay as they are; `afas-sync unmanaged` lists them"
            );
        }
    }
}

/// What a look at the unmanaged users did, after a delivery.
pub(super) fn sweep_out(s: &Sweep, o: &mut Out) {
    if let Some(e) = &s.error {
        esay!(o, "error: unmanaged target users: {e}");
    } else if let Some(why) = &s.skipped {
        say!(o, "unmanaged target users: not looked at now: {why}");
    } else if let Some(why) = &s.held {
        say!(o, "unmanaged target users: HELD, nothing was deactivated: {why}");
    } else if s.deactivated > 0 || s.failed > 0 {
        say!(
            o,
            "unmanaged target users: {} deactivated, {} failed (no employee matches them)",
            s.deactivated,
            s.failed
        );
    }
    for (id, why) in &s.failures {
        esay!(o, "  could not deactivate user {id}: {why}");
    }
}

/// `afas-sync unmanaged`: the list, or what deactivating them did.
pub(super) fn unmanaged_out(s: &Sweep, json_out: bool, o: &mut Out) -> i32 {
    if json_out {
        say!(o, "{}", serde_json::to_value(s).unwrap_or_else(|_| json!({})));
    } else if s.error.is_none() && s.skipped.is_none() {
        say!(
            o,
            "{} target users no employee matches, {} of them active (sink.scim.unmanaged = \"{}\"; the leaver guards allow {}: {})",
            s.unmanaged,
            s.active,
            s.setting,
            s.limit,
            s.limit_why
        );
        for u in s.users.iter().take(SHOWN) {
            say!(o, "{}", user_line(u));
        }
        let shown = s.users.len().min(SHOWN) as u64;
        if shown < s.active {
            say!(o, "    … and {} more (--json lists up to {LISTED})", s.active - shown);
        }
    }
    if !json_out {
        sweep_out(s, o);
    }
    if s.error.is_some() || s.failed > 0 {
        exit::FAILURE
    } else if s.skipped.is_some() || s.approval || (s.asked.is_some() && s.held.is_some()) {
        exit::HELD
    } else {
        exit::OK
    }
}
