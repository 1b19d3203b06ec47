//! The SCIM target's side of a dry run, as text.

use super::Out;
use crate::delivery::scim::{Takeover, LISTED};

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
    const SHOWN: usize = 20;
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
            say!(
                o,
                "    user {} ({}){}",
                u.id,
                u.user_name.as_deref().unwrap_or("?"),
                u.external_id
                    .as_deref()
                    .map(|x| format!(", externalId {x}"))
                    .unwrap_or_default()
            );
        }
        more(o, t.unmanaged_list.len().min(SHOWN), t.unmanaged);
    }
}
