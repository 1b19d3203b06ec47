//! The kinds of sink: each one's name (in the state file, metrics and
//! commands) and which outbox entries it takes from a run.

/// When a sink gets an entry for the run as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEvent {
    Never,
    WithMutations,
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SinkKind {
    Scim,
    Webhook,
    Files,
}

impl SinkKind {
    pub const ALL: [SinkKind; 3] = [SinkKind::Scim, SinkKind::Webhook, SinkKind::Files];
    pub const NAMES: [&'static str; 3] = ["scim", "webhook", "files"];

    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Scim => Self::NAMES[0],
            SinkKind::Webhook => Self::NAMES[1],
            SinkKind::Files => Self::NAMES[2],
        }
    }

    pub fn parse(name: &str) -> Option<SinkKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// One entry per mutation: a SCIM target and a webhook receiver take
    /// each change; the file sink writes one file per run.
    pub fn takes_mutations(self) -> bool {
        !matches!(self, SinkKind::Files)
    }

    /// An entry for the run itself: webhook `sync.*` events for every run,
    /// the file sink's file for a run with changes.
    pub fn run_event(self) -> RunEvent {
        match self {
            SinkKind::Scim => RunEvent::Never,
            SinkKind::Webhook => RunEvent::Always,
            SinkKind::Files => RunEvent::WithMutations,
        }
    }

    /// Whether a run gets an entry for itself (`has_mutations`: it changed
    /// something).
    pub fn takes_run(self, has_mutations: bool) -> bool {
        match self.run_event() {
            RunEvent::Never => false,
            RunEvent::WithMutations => has_mutations,
            RunEvent::Always => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SinkKind;

    #[test]
    fn every_kind_parses_back_from_its_name() {
        for k in SinkKind::ALL {
            assert_eq!(SinkKind::parse(k.name()), Some(k));
        }
        assert_eq!(SinkKind::parse("ldap"), None);
        assert!(SinkKind::Files.takes_run(true) && !SinkKind::Files.takes_run(false));
        assert!(!SinkKind::Scim.takes_run(true) && SinkKind::Webhook.takes_run(false));
    }
}
