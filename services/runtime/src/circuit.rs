//! A circuit breaker per called service (README, "Circuit breakers").
//!
//! After [`BreakerSettings::failures_to_open`] calls in a row fail the way a
//! dead or overloaded service fails (UNAVAILABLE, DEADLINE_EXCEEDED, a
//! connection error), the circuit opens: calls fail at once with
//! UNAVAILABLE "circuit open" instead of each waiting for its timeout, which
//! is what lets a gateway answer 503 quickly while a dependency is down
//! rather than pile up requests. After [`BreakerSettings::cool_down`] one
//! trial call goes through (half-open): its success closes the circuit, its
//! failure opens it for another cool-down. Any other answer, errors a
//! caller made included, counts as the service being alive.
//!
//! [`Circuit`] is the state machine alone, driven with explicit instants so
//! it is tested without a clock; [`Breaker`] shares one between the clones
//! of a channel and reports it as metrics.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tonic::{Code, Status};

/// When a circuit opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the circuit.
    pub failures_to_open: u32,
    /// How long an open circuit refuses calls before a trial.
    pub cool_down: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures_to_open: 5,
            cool_down: Duration::from_secs(5),
        }
    }
}

/// The three states, as `parley_client_circuit_state` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through (0).
    Closed,
    /// One trial call is allowed (1).
    HalfOpen,
    /// Calls fail at once (2).
    Open,
}

impl CircuitState {
    /// The gauge value.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }

    /// The `state` label of the transitions counter.
    pub fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }
}

/// What [`Circuit::admit`] decided about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// An ordinary call.
    Call,
    /// The half-open trial: its outcome decides the state.
    Trial,
}

/// The state machine of one circuit.
#[derive(Debug)]
pub struct Circuit {
    settings: BreakerSettings,
    state: State,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_running: bool },
}

impl Circuit {
    /// A closed circuit.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: State::Closed { failures: 0 },
        }
    }

    /// The state as reported.
    pub fn state(&self) -> CircuitState {
        match self.state {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Whether a call may go now; `None` means refuse it (open, or a trial
    /// is already running).
    pub fn admit(&mut self, now: Instant) -> Option<Admission> {
        match self.state {
            State::Closed { .. } => Some(Admission::Call),
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen {
                    trial_running: true,
                };
                Some(Admission::Trial)
            }
            State::Open { .. }
            | State::HalfOpen {
                trial_running: true,
            } => None,
            State::HalfOpen {
                trial_running: false,
            } => {
                self.state = State::HalfOpen {
                    trial_running: true,
                };
                Some(Admission::Trial)
            }
        }
    }

    /// Records how an admitted call ended (`failed`: the service looked
    /// dead or overloaded).
    pub fn record(&mut self, admission: Admission, failed: bool, now: Instant) {
        let open = State::Open {
            until: now + self.settings.cool_down,
        };
        self.state = match (self.state, admission, failed) {
            (State::HalfOpen { .. }, Admission::Trial, false) => State::Closed { failures: 0 },
            (State::HalfOpen { .. }, Admission::Trial, true) => open,
            (State::Closed { .. }, _, false) => State::Closed { failures: 0 },
            (State::Closed { failures }, _, true) => {
                let failures = failures + 1;
                if failures >= self.settings.failures_to_open {
                    open
                } else {
                    State::Closed { failures }
                }
            }
            // A call admitted before the circuit opened, ending now: the
            // open circuit keeps its own clock.
            (state, _, _) => state,
        };
    }

    /// A trial that never reported (its caller dropped the call) lets the
    /// next call try.
    pub fn abandon(&mut self, admission: Admission) {
        if admission == Admission::Trial
            && let State::HalfOpen {
                trial_running: true,
            } = self.state
        {
            self.state = State::HalfOpen {
                trial_running: false,
            };
        }
    }
}

/// Whether a call's outcome means the service looked dead or overloaded.
pub fn is_failure(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

/// One circuit shared by every clone of a channel, reported as
/// `parley_client_circuit_state{target}` and
/// `parley_client_circuit_transitions_total{target,state}`.
#[derive(Debug, Clone)]
pub struct Breaker {
    target: Arc<str>,
    circuit: Arc<Mutex<Circuit>>,
}

impl Breaker {
    /// A closed breaker for calls to `target`.
    pub fn new(target: &str, settings: BreakerSettings) -> Self {
        metrics::gauge!("parley_client_circuit_state", "target" => target.to_owned()).set(0.0);
        Self {
            target: Arc::from(target),
            circuit: Arc::new(Mutex::new(Circuit::new(settings))),
        }
    }

    fn with<T>(&self, change: impl FnOnce(&mut Circuit) -> T) -> T {
        let mut circuit = self
            .circuit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = circuit.state();
        let answer = change(&mut circuit);
        let after = circuit.state();
        if before != after {
            let target = self.target.to_string();
            metrics::gauge!("parley_client_circuit_state", "target" => target.clone())
                .set(after.gauge());
            metrics::counter!(
                "parley_client_circuit_transitions_total",
                "target" => target,
                "state" => after.label()
            )
            .increment(1);
            if after == CircuitState::Open {
                tracing::warn!(target = %self.target, "circuit open: calls fail fast until a trial succeeds");
            } else if after == CircuitState::Closed {
                tracing::info!(target = %self.target, "circuit closed");
            }
        }
        answer
    }

    /// Admits a call, or refuses it with UNAVAILABLE "circuit open".
    ///
    /// # Errors
    /// The refusal.
    pub fn admit(&self) -> Result<Permit, Status> {
        match self.with(|circuit| circuit.admit(Instant::now())) {
            Some(admission) => Ok(Permit {
                breaker: self.clone(),
                admission,
                recorded: false,
            }),
            None => Err(Status::unavailable(format!(
                "{} is unavailable: circuit open",
                self.target
            ))),
        }
    }
}

/// An admitted call; report its outcome with [`Permit::record`]. Dropped
/// unrecorded (a cancelled call), it frees the trial slot.
#[derive(Debug)]
pub struct Permit {
    breaker: Breaker,
    admission: Admission,
    recorded: bool,
}

impl Permit {
    /// Reports the outcome.
    pub fn record(mut self, failed: bool) {
        self.recorded = true;
        let admission = self.admission;
        self.breaker
            .with(|circuit| circuit.record(admission, failed, Instant::now()));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded {
            let admission = self.admission;
            self.breaker.with(|circuit| circuit.abandon(admission));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures_to_open: 3,
            cool_down: Duration::from_secs(5),
        }
    }

    #[test]
    fn failures_in_a_row_open_it_and_a_success_resets_the_count() {
        let t = Instant::now();
        let mut circuit = Circuit::new(settings());
        for _ in 0..2 {
            let call = circuit.admit(t).unwrap();
            circuit.record(call, true, t);
        }
        let call = circuit.admit(t).unwrap();
        circuit.record(call, false, t);
        for _ in 0..2 {
            let call = circuit.admit(t).unwrap();
            circuit.record(call, true, t);
        }
        assert_eq!(circuit.state(), CircuitState::Closed, "2 in a row only");
        let call = circuit.admit(t).unwrap();
        circuit.record(call, true, t);
        assert_eq!(circuit.state(), CircuitState::Open);
        assert_eq!(circuit.admit(t + Duration::from_secs(4)), None);
    }

    #[test]
    fn after_the_cool_down_one_trial_decides() {
        let t = Instant::now();
        let mut circuit = Circuit::new(settings());
        for _ in 0..3 {
            let call = circuit.admit(t).unwrap();
            circuit.record(call, true, t);
        }
        let later = t + Duration::from_secs(5);
        assert_eq!(circuit.admit(later), Some(Admission::Trial));
        assert_eq!(circuit.state(), CircuitState::HalfOpen);
        assert_eq!(circuit.admit(later), None, "one trial at a time");
        circuit.record(Admission::Trial, true, later);
        assert_eq!(
            circuit.state(),
            CircuitState::Open,
            "a failed trial reopens"
        );
        assert_eq!(circuit.admit(later + Duration::from_secs(4)), None);

        let again = later + Duration::from_secs(5);
        let trial = circuit.admit(again).unwrap();
        circuit.record(trial, false, again);
        assert_eq!(circuit.state(), CircuitState::Closed);
        assert_eq!(circuit.admit(again), Some(Admission::Call));
    }

    #[test]
    fn an_abandoned_trial_lets_the_next_call_try() {
        let t = Instant::now();
        let mut circuit = Circuit::new(settings());
        for _ in 0..3 {
            let call = circuit.admit(t).unwrap();
            circuit.record(call, true, t);
        }
        let later = t + Duration::from_secs(6);
        let trial = circuit.admit(later).unwrap();
        circuit.abandon(trial);
        assert_eq!(circuit.admit(later), Some(Admission::Trial));
    }

    #[test]
    fn late_answers_of_calls_admitted_before_the_opening_change_nothing() {
        let t = Instant::now();
        let mut circuit = Circuit::new(settings());
        let slow = circuit.admit(t).unwrap();
        for _ in 0..3 {
            let call = circuit.admit(t).unwrap();
            circuit.record(call, true, t);
        }
        circuit.record(slow, false, t);
        assert_eq!(circuit.state(), CircuitState::Open);
    }

    #[test]
    fn only_signs_of_a_dead_service_count() {
        assert!(is_failure(Code::Unavailable) && is_failure(Code::DeadlineExceeded));
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::Internal,
            Code::Ok,
        ] {
            assert!(!is_failure(code), "{code:?}");
        }
    }
}
