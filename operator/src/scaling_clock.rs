//! The Guardian's clock, and the wall times of what it remembers across operator restarts.
//!
//! The Guardian counts on a monotonic clock of its own (a `Duration`). What must outlive the
//! operator process, the out-of-memory kills of the last [`OOM_MEMORY`], goes into the
//! policy's status with wall times (`oomKills`), and comes back from it when a new process
//! (a restart, a new leader) first reconciles the policy. Pure conversions only.

use std::time::{Duration, Instant};

use cellmesh_api::crd::scaling::{OomKill, Resource};
use cellmesh_api::quantity;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::guardian::{self, OOM_MEMORY, Observation, RememberedOom};

/// The Guardian's clock now: time since this operator started, plus [`OOM_MEMORY`], so that
/// every kill still worth remembering (up to a day before the start) has a place on it, and
/// a time at its start means "at least a day ago" (a `Duration` cannot be negative).
pub fn guardian_clock(started: Instant) -> Duration {
    started.elapsed() + OOM_MEMORY
}

/// Wall time `time` on the Guardian's clock, which reads `clock` at wall time `now`. Times
/// before the clock's start read as its start; times after `now` (clock skew) as `now`.
pub fn on_guardian_clock(time: Timestamp, now: Timestamp, clock: Duration) -> Duration {
    let age = Duration::try_from(now.duration_since(time)).unwrap_or(Duration::ZERO);
    clock.saturating_sub(age)
}

/// The wall time of `at` on the Guardian's clock, which reads `clock` at wall time `now`.
pub fn wall_time(at: Duration, now: Timestamp, clock: Duration) -> Timestamp {
    SignedDuration::try_from(clock.saturating_sub(at))
        .ok()
        .and_then(|age| now.checked_sub(age).ok())
        .unwrap_or(now)
}

/// The status' kills as the Guardian remembers them; expired ones and limits that do not
/// parse (nobody but the operator writes them) are left out.
pub fn oom_kills_from_status(
    kills: &[OomKill],
    now: Timestamp,
    clock: Duration,
) -> Vec<RememberedOom> {
    kills
        .iter()
        .filter_map(|kill| {
            let at = on_guardian_clock(kill.last_kill_time.0, now, clock);
            let limit = quantity::parse(&kill.limit.0).ok()?;
            (clock.saturating_sub(at) < OOM_MEMORY).then(|| RememberedOom {
                workload: kill.workload.clone(),
                container: kill.container.clone(),
                limit,
                at,
            })
        })
        .collect()
}

/// The Guardian's kills for the status.
pub fn oom_kills_to_status(
    kills: &[RememberedOom],
    now: Timestamp,
    clock: Duration,
) -> Vec<OomKill> {
    kills
        .iter()
        .map(|kill| OomKill {
            workload: kill.workload.clone(),
            container: kill.container.clone(),
            limit: guardian::format(Resource::Memory, kill.limit),
            last_kill_time: Time(wall_time(kill.at, now, clock)),
        })
        .collect()
}

/// Puts on the Guardian's clock when each observed container's last OOM kill happened
/// (`last_oom` is the `finishedAt` of its terminated state, when it had one).
pub fn time_oom_kills<'a>(
    observations: impl IntoIterator<Item = &'a mut Observation>,
    now: Timestamp,
    clock: Duration,
) {
    for observation in observations {
        observation.last_oom_at = observation
            .last_oom
            .as_deref()
            .and_then(|id| id.parse::<Timestamp>().ok())
            .map(|finished| on_guardian_clock(finished, now, clock));
    }
}

#[cfg(test)]
mod tests {
    use cellmesh_api::service::Quantity;

    use super::*;

    const MI: f64 = 1024.0 * 1024.0;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn wall_times_and_the_guardian_clock_convert_both_ways() {
        let now = at("2026-12-08T00:00:00Z");
        let clock = OOM_MEMORY + Duration::from_secs(600);
        let ten_minutes_ago = on_guardian_clock(at("2026-12-07T23:50:00Z"), now, clock);
        assert_eq!(ten_minutes_ago, OOM_MEMORY);
        assert_eq!(
            wall_time(ten_minutes_ago, now, clock),
            at("2026-12-07T23:50:00Z")
        );
        // Before the clock's start: its start, at least a day before now.
        assert_eq!(
            on_guardian_clock(at("2026-12-01T00:00:00Z"), now, clock),
            Duration::ZERO
        );
        // A time ahead of now (skew): now.
        assert_eq!(
            on_guardian_clock(at("2026-12-08T00:01:00Z"), now, clock),
            clock
        );
    }

    #[test]
    fn oom_kills_survive_a_round_trip_through_the_status_until_they_expire() {
        let now = at("2026-12-08T12:00:00Z");
        let clock = OOM_MEMORY + Duration::from_secs(3600);
        let kill = RememberedOom {
            workload: "s2".into(),
            container: "cell".into(),
            limit: 128.0 * MI,
            at: clock - Duration::from_secs(7200),
        };
        let status = oom_kills_to_status(std::slice::from_ref(&kill), now, clock);
        assert_eq!(status[0].limit, Quantity("128Mi".into()));
        assert_eq!(status[0].last_kill_time.0, at("2026-12-08T10:00:00Z"));
        // A new process, 5 minutes after the old one wrote the status, with its own clock.
        let later = at("2026-12-08T12:05:00Z");
        let new_clock = OOM_MEMORY + Duration::from_secs(1);
        let back = oom_kills_from_status(&status, later, new_clock);
        assert_eq!(
            back,
            [RememberedOom {
                at: new_clock - Duration::from_secs(7500),
                ..kill.clone()
            }]
        );
        // More than a day after the kill, it is gone; a limit that does not parse too.
        assert!(oom_kills_from_status(&status, at("2026-12-09T10:00:01Z"), new_clock).is_empty());
        let mut garbled = status.clone();
        garbled[0].limit = Quantity("lots".into());
        assert!(oom_kills_from_status(&garbled, later, new_clock).is_empty());
    }

    #[test]
    fn an_observed_kill_is_timed_from_its_finished_at() {
        let now = at("2026-12-08T00:00:00Z");
        let clock = OOM_MEMORY + Duration::from_secs(60);
        let mut killed = Observation {
            last_oom: Some("2026-12-07T23:59:30Z".into()),
            ..Observation::default()
        };
        let mut unknown = Observation {
            last_oom: Some("exit 137".into()),
            ..Observation::default()
        };
        time_oom_kills([&mut killed, &mut unknown], now, clock);
        assert_eq!(killed.last_oom_at, Some(clock - Duration::from_secs(30)));
        assert_eq!(unknown.last_oom_at, None);
    }
}
