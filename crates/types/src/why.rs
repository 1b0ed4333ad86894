//! Why an agent is in its state, and the states.
//!
//! The why is one concept with one name everywhere: the sensor's six reasons
//! (its exact words, from `fleet_health_sensor::Why`) and the fleet's three
//! (`not reporting`, `stopped`, `inactive`). Each has a stable code (its
//! `fleethealth.v1.Why` number, also what the store keeps), its exact text (JSON,
//! metrics labels, logs) and a short name for flags (`no-data-sent`).

use std::fmt;

use fleet_health_sensor as sensor;

/// An agent's overall state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// No restart needed.
    Healthy,
    /// A restart candidate.
    Faulty,
    /// Silent for the inactive window: kept, never a restart candidate.
    Inactive,
}

impl State {
    /// Every state, in a fixed order.
    pub const ALL: [State; 3] = [State::Healthy, State::Faulty, State::Inactive];

    /// The lower-case word, as in JSON, metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Faulty => "faulty",
            State::Inactive => "inactive",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which agents a list or watch asks for, by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StateFilter {
    /// Healthy and faulty: every agent but the inactive ones.
    #[default]
    Active,
    /// Faulty agents only.
    Faulty,
    /// Healthy agents only.
    Healthy,
    /// Inactive agents only.
    Inactive,
    /// Every agent.
    All,
}

impl StateFilter {
    /// Whether an agent in state `s` passes the filter.
    pub const fn takes(self, s: State) -> bool {
        match self {
            StateFilter::Active => !matches!(s, State::Inactive),
            StateFilter::Faulty => matches!(s, State::Faulty),
            StateFilter::Healthy => matches!(s, State::Healthy),
            StateFilter::Inactive => matches!(s, State::Inactive),
            StateFilter::All => true,
        }
    }

    /// The word, as flags spell it: `active`, `faulty`, `healthy`,
    /// `inactive`, `all`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StateFilter::Active => "active",
            StateFilter::Faulty => "faulty",
            StateFilter::Healthy => "healthy",
            StateFilter::Inactive => "inactive",
            StateFilter::All => "all",
        }
    }
}

/// Which agents a list or watch asks for, by their maintenance marks. An
/// agent under maintenance keeps its real state; faulty lists leave it out
/// by default so that planned work does not look like a fault to fix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MaintenanceFilter {
    /// Faulty lists leave agents under maintenance out; every other state
    /// filter takes them.
    #[default]
    Default,
    /// Take agents under maintenance too.
    Include,
    /// Leave agents under maintenance out.
    Exclude,
    /// Only agents under maintenance.
    Only,
}

impl MaintenanceFilter {
    /// Whether an agent that `states` takes, and that is under maintenance
    /// or not, passes.
    pub const fn takes(self, states: StateFilter, under_maintenance: bool) -> bool {
        match self {
            MaintenanceFilter::Default => {
                !(under_maintenance && matches!(states, StateFilter::Faulty))
            }
            MaintenanceFilter::Include => true,
            MaintenanceFilter::Exclude => !under_maintenance,
            MaintenanceFilter::Only => under_maintenance,
        }
    }

    /// The word, as flags spell it: `default`, `include`, `exclude`, `only`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MaintenanceFilter::Default => "default",
            MaintenanceFilter::Include => "include",
            MaintenanceFilter::Exclude => "exclude",
            MaintenanceFilter::Only => "only",
        }
    }
}

/// Why an agent is in its state: the sensor's six reasons and the fleet's three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Why {
    /// The sensor: all is ok.
    AllIsOk,
    /// The sensor: shutdown is in progress.
    ShutdownInProgress,
    /// The sensor: not registered.
    NotRegistered,
    /// The sensor: no data sent to server.
    NoDataSent,
    /// The sensor: no data received from server.
    NoDataReceived,
    /// The sensor: stuck at shutdown.
    StuckAtShutdown,
    /// The fleet: nothing heard for the silence window.
    NotReporting,
    /// The fleet: the agent said it stopped on purpose.
    Stopped,
    /// The fleet: nothing heard for the inactive window.
    Inactive,
}

impl Why {
    /// How many there are.
    pub const COUNT: usize = 9;

    /// Every why, in a fixed order (the index of [`Why::index`]).
    pub const ALL: [Why; Why::COUNT] = [
        Why::AllIsOk,
        Why::ShutdownInProgress,
        Why::NotRegistered,
        Why::NoDataSent,
        Why::NoDataReceived,
        Why::StuckAtShutdown,
        Why::NotReporting,
        Why::Stopped,
        Why::Inactive,
    ];

    /// Position in [`Why::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// A stable number: the `fleethealth.v1.Why` value, also what the store keeps.
    pub const fn code(self) -> u32 {
        self as u32 + 1
    }

    /// The why of a [`Why::code`].
    pub fn from_code(code: u32) -> Option<Why> {
        let i = usize::try_from(code.checked_sub(1)?).ok()?;
        Why::ALL.get(i).copied()
    }

    /// The state this why puts an agent in.
    pub const fn state(self) -> State {
        match self {
            Why::AllIsOk | Why::ShutdownInProgress | Why::NotRegistered | Why::Stopped => {
                State::Healthy
            }
            Why::NoDataSent | Why::NoDataReceived | Why::StuckAtShutdown | Why::NotReporting => {
                State::Faulty
            }
            Why::Inactive => State::Inactive,
        }
    }

    /// The exact text: the sensor's words, or the fleet's.
    pub const fn as_str(self) -> &'static str {
        match self {
            Why::AllIsOk => sensor::Why::AllIsOk.as_str(),
            Why::ShutdownInProgress => sensor::Why::ShutdownInProgress.as_str(),
            Why::NotRegistered => sensor::Why::NotRegistered.as_str(),
            Why::NoDataSent => sensor::Why::NoDataSent.as_str(),
            Why::NoDataReceived => sensor::Why::NoDataReceived.as_str(),
            Why::StuckAtShutdown => sensor::Why::StuckAtShutdown.as_str(),
            Why::NotReporting => "not reporting",
            Why::Stopped => "stopped",
            Why::Inactive => "inactive",
        }
    }

    /// The short name, as flags spell it (`no-data-sent`).
    pub const fn name(self) -> &'static str {
        match self {
            Why::AllIsOk => "all-is-ok",
            Why::ShutdownInProgress => "shutdown-in-progress",
            Why::NotRegistered => "not-registered",
            Why::NoDataSent => "no-data-sent",
            Why::NoDataReceived => "no-data-received",
            Why::StuckAtShutdown => "stuck-at-shutdown",
            Why::NotReporting => "not-reporting",
            Why::Stopped => "stopped",
            Why::Inactive => "inactive",
        }
    }

    /// The why named by its short name, its exact text or its protobuf name,
    /// in any case, with `_`, `-` or spaces between words (`no-data-sent`,
    /// `"no data sent to server"`, `NO_DATA_SENT`, `WHY_NO_DATA_SENT`).
    pub fn parse(input: &str) -> Option<Why> {
        let norm = normalize(input);
        let norm = norm.strip_prefix("why-").unwrap_or(&norm);
        Why::ALL
            .into_iter()
            .find(|w| norm == w.name() || norm == normalize(w.as_str()))
    }
}

fn normalize(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| match c {
            '_' | ' ' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

impl From<sensor::Why> for Why {
    fn from(why: sensor::Why) -> Why {
        match why {
            sensor::Why::AllIsOk => Why::AllIsOk,
            sensor::Why::ShutdownInProgress => Why::ShutdownInProgress,
            sensor::Why::NotRegistered => Why::NotRegistered,
            sensor::Why::NoDataSent => Why::NoDataSent,
            sensor::Why::NoDataReceived => Why::NoDataReceived,
            sensor::Why::StuckAtShutdown => Why::StuckAtShutdown,
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

crate::per_variant!(
    /// One value per why, indexed by the why itself: the number of agents
    /// with each, a gauge or a set for each.
    ByWhy,
    Why,
    Why::COUNT
);

impl ByWhy<u64> {
    /// The sum over the whys that put an agent in `state`.
    pub fn in_state(&self, state: State) -> u64 {
        self.iter()
            .filter(|(w, _)| w.state() == state)
            .map(|(_, n)| *n)
            .sum()
    }

    /// The sum over every why.
    pub fn total(&self) -> u64 {
        self.iter().map(|(_, n)| *n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_indexes_and_names_are_consistent() {
        for (i, w) in Why::ALL.into_iter().enumerate() {
            assert_eq!(w.index(), i);
            assert_eq!(Why::from_code(w.code()), Some(w));
            assert_eq!(Why::parse(w.name()), Some(w));
            assert_eq!(Why::parse(w.as_str()), Some(w));
        }
        assert_eq!(Why::from_code(0), None);
        assert_eq!(Why::from_code(10), None);
        assert_eq!(Why::parse("No Data Sent To Server"), Some(Why::NoDataSent));
        assert_eq!(Why::parse("no_data_received"), Some(Why::NoDataReceived));
        assert_eq!(
            Why::parse("WHY_STUCK_AT_SHUTDOWN"),
            Some(Why::StuckAtShutdown)
        );
        assert_eq!(Why::parse("bogus"), None);
    }

    #[test]
    fn the_sensors_whys_keep_their_exact_words() {
        for s in sensor::Why::ALL {
            let w = Why::from(s);
            assert_eq!(w.as_str(), s.as_str());
            assert_eq!(w.state() == State::Healthy, s.is_healthy());
        }
    }

    #[test]
    fn by_why_sums_by_state() {
        let mut t = ByWhy::<u64>::default();
        t[Why::NoDataSent] += 2;
        t[Why::NotReporting] += 1;
        t[Why::AllIsOk] += 5;
        t[Why::Inactive] += 7;
        assert_eq!(t.in_state(State::Faulty), 3);
        assert_eq!(t.in_state(State::Healthy), 5);
        assert_eq!(t.in_state(State::Inactive), 7);
        assert_eq!(t.total(), 15);
        let doubled = t.map(|n| n * 2);
        assert_eq!(doubled[Why::AllIsOk], 10);
        assert_eq!(t.into_array()[Why::Inactive.index()], 7);
        let codes = ByWhy::from_fn(Why::code);
        assert!(codes.iter().all(|(w, c)| w.code() == *c));
    }

    #[test]
    fn state_filters_take_the_right_states() {
        assert!(StateFilter::Active.takes(State::Faulty));
        assert!(!StateFilter::Active.takes(State::Inactive));
        assert!(StateFilter::All.takes(State::Inactive));
        assert!(!StateFilter::Healthy.takes(State::Faulty));
        use MaintenanceFilter as M;
        assert!(!M::Default.takes(StateFilter::Faulty, true));
        assert!(M::Default.takes(StateFilter::Faulty, false));
        assert!(M::Default.takes(StateFilter::Active, true));
        assert!(M::Include.takes(StateFilter::Faulty, true));
        assert!(!M::Exclude.takes(StateFilter::All, true));
        assert!(M::Only.takes(StateFilter::Faulty, true));
        assert!(!M::Only.takes(StateFilter::All, false));
    }
}
