use std::collections::BTreeMap;
use std::time::Duration;

use cellmesh_api::crd::scaling::{
    Budget, ResourcePolicy, ScaleAction, ScalingMode, ScalingPolicySpec,
};
use proptest::prelude::*;
use serde_json::json;

use super::*;

const MI: f64 = 1024.0 * 1024.0;

fn spec(value: serde_json::Value) -> ScalingPolicySpec {
    let mut value = value;
    value["targetRef"] = json!({"kind": "WorkModel", "name": "shop"});
    serde_json::from_value(value).unwrap()
}

/// Serverless Containers' defaults on CPU: 2 up events → +750m; 6 down events → fit to usage.
fn cpu_policy() -> ScalingPolicySpec {
    spec(json!({"cpu": {"min": "100m", "max": "4"}, "cooldown": "0s"}))
}

fn cpu(usage: f64, limit: f64) -> Observation {
    Observation {
        cpu: Observed {
            usage: Some(usage),
            request: Some(limit / 2.0),
            limit: Some(limit),
        },
        ..Observation::default()
    }
}

fn one(key: &ContainerKey, observation: Observation) -> BTreeMap<ContainerKey, Observation> {
    BTreeMap::from([(key.clone(), observation)])
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn two_up_events_add_the_default_amount() {
    let policy = cpu_policy();
    let key = ContainerKey::new("s0-abc", "cell");
    let mut guardian = Guardian::new();
    let first = guardian
        .tick(&policy, secs(10), &one(&key, cpu(0.9, 1.0)))
        .unwrap();
    assert!(first.decisions.is_empty(), "one up event is not enough");
    assert_eq!(first.reports[&key][&ResourceName::Cpu].up_events, 1);
    let second = guardian
        .tick(&policy, secs(20), &one(&key, cpu(0.9, 1.0)))
        .unwrap();
    assert_eq!(second.decisions.len(), 1);
    let change = &second.decisions[0].changes[0];
    assert_eq!(change.to.limit.0, "1750m");
    // The request keeps its 1:2 ratio: Burstable stays Burstable.
    assert_eq!(change.from.request.as_ref().unwrap().0, "500m");
    assert_eq!(change.to.request.as_ref().unwrap().0, "875m");
    assert_eq!(change.reason, Reason::UpEvents(2));
    assert_eq!(change.describe(), "cpu 1→1750m (2 up events)");
    // Events were consumed by the action.
    let third = guardian
        .tick(&policy, secs(30), &one(&key, cpu(0.9, 1.75)))
        .unwrap();
    assert!(third.decisions.is_empty());
    assert_eq!(third.reports[&key][&ResourceName::Cpu].up_events, 0);
}

#[test]
fn one_throttled_window_is_enough_to_scale_up() {
    let policy = cpu_policy();
    let key = ContainerKey::new("s0-abc", "cell");
    let mut guardian = Guardian::new();
    // 0.97 of the limit: pinned at the quota, so the usage says nothing of the demand.
    let tick = guardian
        .tick(&policy, secs(10), &one(&key, cpu(0.97, 1.0)))
        .unwrap();
    let [decision] = tick.decisions.as_slice() else {
        panic!("one throttled window scales up: {tick:?}")
    };
    let change = &decision.changes[0];
    assert_eq!(change.reason, Reason::Throttled(1));
    assert_eq!(change.to.limit.0, "1750m");
    assert_eq!(change.describe(), "cpu 1→1750m (throttled at its limit)");
    // It is an up event too.
    assert_eq!(tick.reports[&key][&ResourceName::Cpu].up_events, 1);
    // Just below the threshold it is an ordinary up event: two are needed.
    let mut guardian = Guardian::new();
    let below = guardian
        .tick(&policy, secs(10), &one(&key, cpu(0.94, 1.0)))
        .unwrap();
    assert!(below.decisions.is_empty(), "{below:?}");
    // Memory is never throttled: a full memory limit waits for upEvents.
    let memory = spec(json!({"memory": {"min": "64Mi", "max": "1Gi"}, "cooldown": "0s"}));
    let full = Observation {
        memory: Observed {
            usage: Some(255.0 * MI),
            request: None,
            limit: Some(256.0 * MI),
        },
        ..Observation::default()
    };
    let tick = Guardian::new()
        .tick(&memory, secs(10), &one(&key, full))
        .unwrap();
    assert!(tick.decisions.is_empty(), "{tick:?}");
}

/// A container at `usage` whose bursts were throttled in `throttling` of its CPU periods.
fn bursty(usage: f64, limit: f64, throttling: f64) -> Observation {
    Observation {
        cpu_throttling: Some(throttling),
        ..cpu(usage, limit)
    }
}

#[test]
fn a_bursty_container_throttled_below_its_limit_scales_up_and_is_not_scaled_back() {
    let policy = cpu_policy();
    let key = ContainerKey::new("s0-abc", "cell");
    let mut guardian = Guardian::new();
    // Half the limit on average, but throttled in 40 % of its periods: one window is enough,
    // and the step is not capped at usage / lower (1.25).
    let tick = guardian
        .tick(&policy, secs(10), &one(&key, bursty(0.5, 1.0, 0.4)))
        .unwrap();
    let [decision] = tick.decisions.as_slice() else {
        panic!("a throttled window scales up: {tick:?}")
    };
    assert_eq!(
        decision.changes[0].describe(),
        "cpu 1→1750m (throttled at its limit)"
    );
    let report = &tick.reports[&key][&ResourceName::Cpu];
    assert_eq!(report.throttling, Some(0.4));
    assert_eq!(report.floor, Some(1.25));
    // Unthrottled at 1750m, the same average is a down event (below 0.7) six times; fitting
    // it (0.75) would throttle it again, so the scale-down stops at the floor.
    let mut down = None;
    for t in 2..=7 {
        let tick = guardian
            .tick(&policy, secs(10 * t), &one(&key, bursty(0.5, 1.75, 0.0)))
            .unwrap();
        down = tick.decisions.into_iter().next().or(down);
    }
    let change = &down.expect("six down events scale down").changes[0];
    assert_eq!(change.describe(), "cpu 1750m→1250m (6 down events)");
    // The load goes: below 40 % of the throttled usage the floor is forgotten.
    let quiet = guardian
        .tick(&policy, secs(80), &one(&key, bursty(0.19, 1.25, 0.0)))
        .unwrap();
    assert_eq!(quiet.reports[&key][&ResourceName::Cpu].floor, None);
    let mut down = None;
    for t in 9..=13 {
        let tick = guardian
            .tick(&policy, secs(10 * t), &one(&key, bursty(0.19, 1.25, 0.0)))
            .unwrap();
        down = tick.decisions.into_iter().next().or(down);
    }
    // fitToUsage: 0.19 × 1.5 = 285m.
    let change = &down.expect("six down events scale down").changes[0];
    assert_eq!(change.describe(), "cpu 1250m→285m (6 down events)");
}

#[test]
fn throttled_up_events_can_ask_for_as_many_windows_as_any_up_event() {
    let policy = spec(
        json!({"cpu": {"min": "100m", "max": "4", "throttledUpEvents": 2},
                             "cooldown": "0s"}),
    );
    let key = ContainerKey::new("s0-abc", "cell");
    let mut guardian = Guardian::new();
    let first = guardian
        .tick(&policy, secs(10), &one(&key, cpu(1.0, 1.0)))
        .unwrap();
    assert!(first.decisions.is_empty(), "{first:?}");
    let second = guardian
        .tick(&policy, secs(20), &one(&key, cpu(1.0, 1.0)))
        .unwrap();
    // Two windows, both throttled and both up events: `upEvents` is checked first.
    assert_eq!(second.decisions[0].changes[0].reason, Reason::UpEvents(2));
    // A value above upEvents means upEvents: throttling never waits longer than an up event.
    let lax = spec(json!({"cpu": {"min": "100m", "max": "4", "upEvents": 1,
                                  "throttledUpEvents": 5}}));
    let tick = Guardian::new()
        .tick(&lax, secs(10), &one(&key, cpu(1.0, 1.0)))
        .unwrap();
    assert_eq!(tick.decisions.len(), 1, "{tick:?}");
}

#[test]
fn six_down_events_fit_the_limit_to_usage() {
    let policy = cpu_policy();
    let key = ContainerKey::new("s0-abc", "cell");
    let mut guardian = Guardian::new();
    for i in 1..=5 {
        let tick = guardian
            .tick(&policy, secs(10 * i), &one(&key, cpu(0.2, 2.0)))
            .unwrap();
        assert!(tick.decisions.is_empty(), "tick {i}");
    }
    let sixth = guardian
        .tick(&policy, secs(60), &one(&key, cpu(0.2, 2.0)))
        .unwrap();
    let change = &sixth.decisions[0].changes[0];
    // usage × (1 + 0.5) = 300m: usage sits at 67% of the new limit, inside the band.
    assert_eq!(change.to.limit.0, "300m");
    assert_eq!(change.reason, Reason::DownEvents(6));
}

#[test]
fn one_busy_window_vetoes_shrinking() {
    let policy = cpu_policy();
    let key = ContainerKey::new("p", "c");
    let mut guardian = Guardian::new();
    let mut t = 0;
    let mut step = |usage: f64| {
        t += 10;
        guardian
            .tick(&policy, secs(t), &one(&key, cpu(usage, 2.0)))
            .unwrap()
    };
    for _ in 0..3 {
        assert!(step(0.2).decisions.is_empty());
    }
    assert!(step(1.8).decisions.is_empty(), "a single up event");
    for _ in 0..3 {
        assert!(
            step(0.2).decisions.is_empty(),
            "the up event is still remembered"
        );
    }
}

#[test]
fn old_events_are_forgotten() {
    let policy = cpu_policy(); // event timeout = max(2, 6) × 15s = 90s
    let key = ContainerKey::new("p", "c");
    let mut guardian = Guardian::new();
    assert!(
        guardian
            .tick(&policy, secs(0), &one(&key, cpu(0.9, 1.0)))
            .unwrap()
            .decisions
            .is_empty()
    );
    let later = guardian
        .tick(&policy, secs(91), &one(&key, cpu(0.9, 1.0)))
        .unwrap();
    assert!(later.decisions.is_empty(), "the first event expired");
    assert_eq!(later.reports[&key][&ResourceName::Cpu].up_events, 1);
}

#[test]
fn cooldown_spaces_resizes() {
    let policy = spec(json!({
        "cpu": {"min": "100m", "max": "8", "upEvents": 1},
        "cooldown": "30s"
    }));
    let key = ContainerKey::new("p", "c");
    let mut guardian = Guardian::new();
    let first = guardian
        .tick(&policy, secs(10), &one(&key, cpu(1.0, 1.0)))
        .unwrap();
    assert_eq!(first.decisions.len(), 1);
    let held = guardian
        .tick(&policy, secs(20), &one(&key, cpu(1.75, 1.75)))
        .unwrap();
    assert!(held.decisions.is_empty(), "within the cooldown");
    assert_eq!(
        held.reports[&key][&ResourceName::Cpu].recommendation,
        Some(2.5),
        "the recommendation is still reported"
    );
    let after = guardian
        .tick(&policy, secs(41), &one(&key, cpu(1.75, 1.75)))
        .unwrap();
    assert_eq!(after.decisions.len(), 1);
}

#[test]
fn limits_stay_within_min_and_max() {
    let policy = spec(
        json!({"cpu": {"min": "500m", "max": "1200m", "upEvents": 1, "downEvents": 1}, "cooldown": "0s"}),
    );
    let key = ContainerKey::new("p", "c");
    let mut guardian = Guardian::new();
    let up = guardian
        .tick(&policy, secs(10), &one(&key, cpu(1.0, 1.0)))
        .unwrap();
    assert_eq!(up.decisions[0].changes[0].to.limit.0, "1200m");
    let capped = guardian
        .tick(&policy, secs(20), &one(&key, cpu(1.2, 1.2)))
        .unwrap();
    assert!(capped.decisions.is_empty(), "already at max");
    // The up event seen at max (t=20) vetoes shrinking until it expires (timeout 15s).
    let vetoed = guardian
        .tick(&policy, secs(30), &one(&key, cpu(0.0, 1.2)))
        .unwrap();
    assert!(vetoed.decisions.is_empty());
    let down = guardian
        .tick(&policy, secs(36), &one(&key, cpu(0.0, 1.2)))
        .unwrap();
    assert_eq!(down.decisions[0].changes[0].to.limit.0, "500m");
}

#[test]
fn an_oom_kill_bumps_memory_at_once_and_only_once() {
    let policy = spec(json!({"memory": {"min": "64Mi", "max": "4Gi"}, "cooldown": "1h"}));
    let key = ContainerKey::new("p", "c");
    let observation = |oom: Option<&str>| Observation {
        memory: Observed {
            usage: Some(100.0 * MI),
            request: Some(256.0 * MI),
            limit: Some(256.0 * MI),
        },
        last_oom: oom.map(str::to_owned),
        ..Observation::default()
    };
    let mut guardian = Guardian::new();
    assert!(
        guardian
            .tick(&policy, secs(0), &one(&key, observation(None)))
            .unwrap()
            .decisions
            .is_empty()
    );
    let bumped = guardian
        .tick(
            &policy,
            secs(5),
            &one(&key, observation(Some("2026-11-23T10:00:00Z"))),
        )
        .unwrap();
    let change = &bumped.decisions[0].changes[0];
    // max(1.2 × 256Mi, 256Mi + 100Mi) = 356Mi; Guaranteed memory stays Guaranteed.
    assert_eq!(change.to.limit.0, "356Mi");
    assert_eq!(change.to.request.as_ref().unwrap().0, "356Mi");
    assert_eq!(change.reason, Reason::OomKilled);
    let same = guardian
        .tick(
            &policy,
            secs(10),
            &one(&key, observation(Some("2026-11-23T10:00:00Z"))),
        )
        .unwrap();
    assert!(same.decisions.is_empty(), "the same kill is handled once");
    let again = guardian
        .tick(
            &policy,
            secs(15),
            &one(&key, observation(Some("2026-11-23T10:00:09Z"))),
        )
        .unwrap();
    assert_eq!(
        again.decisions.len(),
        1,
        "a new kill bumps again, cooldown or not"
    );
}

#[test]
fn after_an_oom_kill_memory_scale_downs_stop_above_the_killed_limit_in_every_pod_of_the_workload() {
    let policy =
        spec(json!({"memory": {"min": "64Mi", "max": "4Gi", "downEvents": 2}, "cooldown": "0s"}));
    let observation = |limit: f64, usage: f64, oom: Option<&str>, workload: &str| Observation {
        memory: Observed {
            usage: Some(usage * MI),
            request: Some(limit * MI),
            limit: Some(limit * MI),
        },
        last_oom: oom.map(str::to_owned),
        workload: Some(workload.to_owned()),
        ..Observation::default()
    };
    let kill = Some("2026-11-23T10:00:00Z");
    let mut guardian = Guardian::new();
    let p1 = ContainerKey::new("w-1", "c");
    let bumped = guardian
        .tick(
            &policy,
            secs(0),
            &one(&p1, observation(256.0, 100.0, kill, "w")),
        )
        .unwrap();
    assert_eq!(bumped.decisions[0].changes[0].to.limit.0, "356Mi");
    // Two down events at `at` and `at` + 5 s; the limit the second one decides.
    let mut shrink = |at: u64, key: &ContainerKey, observation: Observation| {
        let first = guardian
            .tick(&policy, secs(at), &one(key, observation.clone()))
            .unwrap();
        assert!(first.decisions.is_empty(), "{first:?}");
        let second = guardian
            .tick(&policy, secs(at + 5), &one(key, observation))
            .unwrap();
        let floor = second.reports[key][&ResourceName::Memory].floor;
        (second.decisions[0].changes[0].to.limit.0.clone(), floor)
    };
    // 50Mi of 356Mi: fitToUsage would set 75Mi, below the 256Mi the container was killed
    // at; the scale-down stops at 256Mi / 0.8 = 320Mi.
    let (to, floor) = shrink(10, &p1, observation(356.0, 50.0, kill, "w"));
    assert_eq!(to, "320Mi");
    assert_eq!(floor, Some(320.0 * MI));
    // The pod is replaced (recreated at a smaller template, say): its successor of the
    // same workload container inherits the floor.
    let p2 = ContainerKey::new("w-2", "c");
    let (to, _) = shrink(100, &p2, observation(400.0, 50.0, None, "w"));
    assert_eq!(to, "320Mi");
    // Another workload's container was never killed.
    let other = ContainerKey::new("v-1", "c");
    let (to, floor) = shrink(200, &other, observation(400.0, 50.0, None, "v"));
    assert_eq!((to.as_str(), floor), ("75Mi", None));
    // A day after the kill, the floor is forgotten.
    let day = OOM_MEMORY.as_secs();
    let (to, floor) = shrink(day, &p2, observation(400.0, 50.0, None, "w"));
    assert_eq!((to.as_str(), floor), ("75Mi", None));
}

#[test]
fn a_restarted_guardian_does_not_bump_a_kill_already_handled_but_bumps_a_new_one() {
    let policy = spec(json!({"memory": {"min": "64Mi", "max": "4Gi"}, "cooldown": "0s"}));
    let day = OOM_MEMORY;
    let observation = |killed_at: Option<Duration>| Observation {
        memory: Observed {
            usage: Some(100.0 * MI),
            request: Some(228.0 * MI),
            limit: Some(228.0 * MI),
        },
        last_oom: killed_at.map(|at| format!("killed at {}", at.as_secs())),
        last_oom_at: killed_at,
        workload: Some("w".into()),
        ..Observation::default()
    };
    let key = ContainerKey::new("w-1", "c");
    let now = day + secs(3600);
    let killed_at = day + secs(600);
    // What the status gave back: this workload container was killed at 128Mi at `killed_at`.
    let resumed = || {
        let mut guardian = Guardian::new();
        guardian.remember_oom(RememberedOom {
            workload: "w".into(),
            container: "c".into(),
            limit: 128.0 * MI,
            at: killed_at,
        });
        guardian
    };
    let mut guardian = resumed();
    let tick = guardian
        .tick(&policy, now, &one(&key, observation(Some(killed_at))))
        .unwrap();
    assert!(tick.decisions.is_empty(), "bumped again: {tick:?}");
    assert_eq!(
        tick.reports[&key][&ResourceName::Memory].floor,
        Some(160.0 * MI),
        "the floor is back"
    );
    assert_eq!(guardian.oom_kills()[0].limit, 128.0 * MI);
    // The status keeps whole seconds: the same kill, read back a fraction later, is still
    // that kill; one a few seconds after the remembered one (while no operator ran) is new.
    let fraction = killed_at + Duration::from_millis(900);
    let tick = resumed()
        .tick(&policy, now, &one(&key, observation(Some(fraction))))
        .unwrap();
    assert!(tick.decisions.is_empty(), "bumped again: {tick:?}");
    let tick = resumed()
        .tick(
            &policy,
            now,
            &one(&key, observation(Some(killed_at + secs(5)))),
        )
        .unwrap();
    assert_eq!(tick.decisions[0].changes[0].reason, Reason::OomKilled);
    // Nothing remembered: a kill more than a day old was handled long ago; a recent one,
    // or one whose time is unknown, is new.
    let old = Guardian::new()
        .tick(&policy, now, &one(&key, observation(Some(secs(0)))))
        .unwrap();
    assert!(old.decisions.is_empty(), "{old:?}");
    let recent = Guardian::new()
        .tick(&policy, now, &one(&key, observation(Some(killed_at))))
        .unwrap();
    assert_eq!(recent.decisions[0].changes[0].reason, Reason::OomKilled);
    let mut untimed = observation(Some(secs(0)));
    untimed.last_oom_at = None;
    let untimed = Guardian::new()
        .tick(&policy, now, &one(&key, untimed))
        .unwrap();
    assert_eq!(untimed.decisions[0].changes[0].reason, Reason::OomKilled);
}

#[test]
fn a_container_without_limit_is_reported_not_scaled() {
    let key = ContainerKey::new("p", "c");
    let observation = Observation {
        cpu: Observed {
            usage: Some(3.0),
            request: None,
            limit: None,
        },
        ..Observation::default()
    };
    let tick = Guardian::new()
        .tick(&cpu_policy(), secs(1), &one(&key, observation))
        .unwrap();
    assert!(tick.decisions.is_empty());
    assert!(tick.reports[&key][&ResourceName::Cpu].note.is_some());
}

#[test]
fn budget_shares_headroom_in_proportion_to_demand() {
    let mut policy = spec(
        json!({"cpu": {"min": "100m", "max": "8", "upEvents": 1, "scaleUp": {"policy": "amount", "amount": "3"}}, "cooldown": "0s"}),
    );
    policy.budget = Some(Budget {
        cpu: Some(Quantity("4".into())),
        memory: None,
    });
    // a wants +3 (capped by usage / lower = 2.5 → +1.5), b wants +3 (capped → +1.5),
    // c is idle at 1: headroom 4 − 3 = 1 is shared 1:1.
    let observations = BTreeMap::from([
        (ContainerKey::new("a", "c"), cpu(1.0, 1.0)),
        (ContainerKey::new("b", "c"), cpu(1.0, 1.0)),
        (ContainerKey::new("c", "c"), cpu(0.5, 1.0)),
    ]);
    let tick = Guardian::new()
        .tick(&policy, secs(10), &observations)
        .unwrap();
    let limits: Vec<_> = tick
        .decisions
        .iter()
        .map(|d| (d.key.pod.as_str(), d.changes[0].to.limit.0.as_str()))
        .collect();
    assert_eq!(limits, [("a", "1500m"), ("b", "1500m")]);
}

#[test]
fn a_malformed_bound_is_an_error_naming_the_field() {
    let mut policy = cpu_policy();
    policy.cpu = Some(ResourcePolicy::new("lots", "2"));
    let err = Guardian::new()
        .tick(
            &policy,
            secs(1),
            &one(&ContainerKey::new("p", "c"), cpu(0.5, 1.0)),
        )
        .unwrap_err();
    assert!(err.to_string().contains("spec.cpu.min/max"), "{err}");
}

#[test]
fn vanished_pods_are_forgotten() {
    let policy = cpu_policy();
    let key = ContainerKey::new("p", "c");
    let mut guardian = Guardian::new();
    guardian
        .tick(&policy, secs(10), &one(&key, cpu(0.9, 1.0)))
        .unwrap();
    guardian.tick(&policy, secs(20), &BTreeMap::new()).unwrap();
    let back = guardian
        .tick(&policy, secs(30), &one(&key, cpu(0.9, 1.0)))
        .unwrap();
    assert!(back.decisions.is_empty(), "events of the old pod are gone");
}

// ---- properties ----

/// Usage `base` with deterministic noise of ±`spread` (a fraction), varying every tick.
fn noisy(base: f64, spread: f64, tick: u64) -> f64 {
    // A fixed pseudo-random sequence in [-1, 1].
    let x = ((tick.wrapping_mul(2_654_435_761) % 1000) as f64 / 500.0) - 1.0;
    base * (1.0 + spread * x)
}

#[test]
fn the_recommendation_does_not_follow_noisy_usage_when_nothing_is_applied() {
    // `mode: Off`: the limit never changes. Low, noisy usage at a 2-core limit: every 6
    // ticks the Guardian decides to fit to usage (≈ 300m, a little different each time).
    let mut policy = cpu_policy();
    policy.mode = ScalingMode::Off;
    let key = ContainerKey::new("p", "c");
    let mut guardian = Guardian::new();
    let mut seen = Vec::new();
    let mut decisions = 0;
    for t in 1..=40 {
        let tick = guardian
            .tick(
                &policy,
                secs(10 * t),
                &one(&key, cpu(noisy(0.2, 0.04, t), 2.0)),
            )
            .unwrap();
        decisions += tick.decisions.len();
        seen.push(
            tick.reports[&key][&ResourceName::Cpu]
                .recommendation
                .unwrap(),
        );
    }
    assert!(decisions >= 5, "the Guardian kept deciding: {decisions}");
    // The limit until the first decision, then that decision's target, unchanged.
    let first = seen[5];
    assert!((0.28..0.32).contains(&first), "{first}");
    assert!(seen[..5].iter().all(|&r| r == 2.0), "{seen:?}");
    assert!(seen[5..].iter().all(|&r| r == first), "{seen:?}");
}

#[test]
fn the_recommendation_moves_when_the_load_really_changes() {
    let mut policy = cpu_policy();
    policy.mode = ScalingMode::Off;
    let key = ContainerKey::new("p", "c");
    let mut guardian = Guardian::new();
    let mut last = None;
    for t in 1..=12 {
        let tick = guardian
            .tick(&policy, secs(10 * t), &one(&key, cpu(0.2, 2.0)))
            .unwrap();
        last = tick.reports[&key][&ResourceName::Cpu].recommendation;
    }
    assert_eq!(last, Some(0.3));
    // Twice the load: the next decision's target (600m) is beyond the tolerance.
    for t in 13..=24 {
        let tick = guardian
            .tick(&policy, secs(10 * t), &one(&key, cpu(0.4, 2.0)))
            .unwrap();
        last = tick.reports[&key][&ResourceName::Cpu].recommendation;
    }
    assert_eq!(last, Some(0.6));
    // The load moves into the band of the current limit: no action needed, so the
    // recommendation is the limit again.
    let tick = guardian
        .tick(&policy, secs(250), &one(&key, cpu(1.2, 2.0)))
        .unwrap();
    assert_eq!(
        tick.reports[&key][&ResourceName::Cpu].recommendation,
        Some(2.0)
    );
}

#[test]
fn an_applied_resize_is_the_recommendation() {
    let policy = cpu_policy();
    let key = ContainerKey::new("p", "c");
    let mut guardian = Guardian::new();
    guardian
        .tick(&policy, secs(10), &one(&key, cpu(0.9, 1.0)))
        .unwrap();
    let tick = guardian
        .tick(&policy, secs(20), &one(&key, cpu(0.9, 1.0)))
        .unwrap();
    assert_eq!(tick.decisions[0].changes[0].to.limit.0, "1750m");
    assert_eq!(
        tick.reports[&key][&ResourceName::Cpu].recommendation,
        Some(1.75)
    );
    for t in 3..10 {
        let tick = guardian
            .tick(
                &policy,
                secs(10 * t),
                &one(&key, cpu(noisy(0.9, 0.05, t), 1.75)),
            )
            .unwrap();
        assert_eq!(
            tick.reports[&key][&ResourceName::Cpu].recommendation,
            Some(1.75)
        );
    }
}

/// Scale-up steps of at least 250m, so a climb from min to max (≤ 5 cores) takes at most
/// 20 steps of at most 3 events: "settles within 200 ticks" is a fair property.
fn up_action() -> impl Strategy<Value = ScaleAction> {
    prop_oneof![
        (250u32..3000).prop_map(|m| ScaleAction::amount(&format!("{m}m"))),
        (1.1f64..3.0).prop_map(|f| ScaleAction {
            policy: cellmesh_api::crd::scaling::RescalePolicy::Proportional,
            amount: None,
            factor: Some(f),
            margin: None,
        }),
        Just(ScaleAction::fit_to_usage()),
    ]
}

/// Scale-down steps of at least 250m or 30%, so a descent from 6 cores settles within
/// 24 steps of at most 6 events.
fn down_action() -> impl Strategy<Value = ScaleAction> {
    prop_oneof![
        (250u32..3000).prop_map(|m| ScaleAction::amount(&format!("{m}m"))),
        (0.2f64..0.7).prop_map(|f| ScaleAction {
            policy: cellmesh_api::crd::scaling::RescalePolicy::Proportional,
            amount: None,
            factor: Some(f),
            margin: None,
        }),
        // Margins that admission accepts with the bands below (1/(1+m) inside them).
        (0.3f64..1.0).prop_map(|m| ScaleAction {
            margin: Some(m),
            ..ScaleAction::fit_to_usage()
        }),
    ]
}

prop_compose! {
    fn cpu_resource_policy()(
        min in 10u32..1000,
        span in 0u32..4000,
        lower in 0.2f64..0.45,
        upper in 0.75f64..0.95,
        up_events in 1u32..4,
        down_events in 1u32..7,
        up in up_action(),
        down in down_action(),
    ) -> ResourcePolicy {
        let mut policy = ResourcePolicy::new(&format!("{min}m"), &format!("{}m", min + span));
        policy.lower = lower;
        policy.upper = upper;
        policy.up_events = up_events;
        policy.down_events = Some(down_events);
        policy.scale_up = Some(up);
        policy.scale_down = Some(down);
        policy
    }
}

/// A ScalingPolicy on CPU that admission accepts.
fn cpu_only_policy() -> impl Strategy<Value = ScalingPolicySpec> {
    (cpu_resource_policy(), 0u64..30).prop_map(|(resource, cooldown)| {
        let mut policy = cpu_policy();
        policy.cpu = Some(resource);
        policy.cooldown = Duration::from_secs(cooldown).into();
        policy
    })
}

/// Applies a tick's decisions to the observed limits, as the Scaler would.
fn apply(limits: &mut BTreeMap<ContainerKey, f64>, tick: &Tick) {
    for decision in &tick.decisions {
        for change in &decision.changes {
            limits.insert(decision.key.clone(), change.to.limit.value().unwrap());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn results_stay_within_min_and_max(
        policy in cpu_only_policy(),
        start in 0.01f64..6.0,
        usages in prop::collection::vec(0.0f64..6.0, 1..60),
    ) {
        let bounds = policy.cpu.clone().unwrap();
        let (min, max) = (bounds.min.value().unwrap(), bounds.max.value().unwrap());
        let key = ContainerKey::new("p", "c");
        let mut limits = BTreeMap::from([(key.clone(), start)]);
        let mut guardian = Guardian::new();
        for (i, usage) in usages.iter().enumerate() {
            let limit = limits[&key];
            let tick = guardian
                .tick(&policy, secs(10 * i as u64), &one(&key, cpu(usage.min(limit), limit)))
                .unwrap();
            for change in tick.decisions.iter().flat_map(|d| &d.changes) {
                let new = change.to.limit.value().unwrap();
                prop_assert!(new >= min - 1e-9 && new <= max + 1e-9,
                    "{new} outside [{min}, {max}]: {}", change.describe());
                let request = change.to.request.as_ref().unwrap().value().unwrap();
                prop_assert!(request < new, "Burstable must stay Burstable: {request} vs {new}");
            }
            apply(&mut limits, &tick);
        }
    }

    #[test]
    fn constant_load_settles_and_then_never_moves(
        policy in cpu_only_policy(),
        start in 0.05f64..6.0,
        demand in 0.0f64..5.0,
    ) {
        let key = ContainerKey::new("p", "c");
        let mut limits = BTreeMap::from([(key.clone(), start)]);
        let mut guardian = Guardian::new();
        let mut last_change = None;
        for i in 0..400u64 {
            let limit = limits[&key];
            // CPU usage is capped by the limit: a throttled container shows its limit.
            let observed = cpu(demand.min(limit), limit);
            let tick = guardian.tick(&policy, secs(10 * i), &one(&key, observed)).unwrap();
            if !tick.decisions.is_empty() {
                last_change = Some(i);
            }
            apply(&mut limits, &tick);
        }
        prop_assert!(last_change.is_none_or(|i| i < 200),
            "still resizing at tick {last_change:?} (limit {})", limits[&key]);
    }

    /// A container whose bursts are throttled below `burst` cores whatever its average: the
    /// floor left by each throttled window rises by 1 / upper, so the limit climbs to where
    /// the throttling stops (or to max) and stays, rather than fitting the average and being
    /// throttled again.
    #[test]
    fn a_bursty_load_climbs_to_a_limit_that_stops_its_throttling_and_stays(
        policy in cpu_only_policy(),
        start in 0.05f64..4.0,
        average in 0.01f64..2.0,
        burst_over in 0.0f64..2.0,
        throttling in 0.25f64..1.0,
    ) {
        let burst = average + burst_over;
        let max = policy.cpu.as_ref().unwrap().max.value().unwrap();
        let key = ContainerKey::new("p", "c");
        let mut limits = BTreeMap::from([(key.clone(), start)]);
        let mut guardian = Guardian::new();
        let mut last_change = None;
        for i in 0..1000u64 {
            let limit = limits[&key];
            let share = if limit < burst { throttling } else { 0.0 };
            let observed = bursty(average.min(limit), limit, share);
            let tick = guardian.tick(&policy, secs(10 * i), &one(&key, observed)).unwrap();
            if !tick.decisions.is_empty() {
                last_change = Some(i);
            }
            apply(&mut limits, &tick);
        }
        let limit = limits[&key];
        prop_assert!(last_change.is_none_or(|i| i < 800),
            "still resizing at tick {last_change:?} (limit {limit}, burst {burst})");
        // Within a grid step (1m): a limit that close to its target is not resized.
        prop_assert!(limit >= burst.min(max) - 1e-3,
            "settled at {limit}, where bursts of {burst} are throttled (max {max})");
    }

    #[test]
    fn a_constant_load_with_noise_keeps_the_recommendation_constant(
        policy in cpu_only_policy(),
        limit in 0.05f64..6.0,
        demand in 0.01f64..5.0,
        spread in 0.0f64..0.03,
        noise in prop::collection::vec(-1.0f64..1.0, 120),
    ) {
        // `mode: Off`: decisions are never applied, so the Guardian keeps deciding.
        let mut policy = policy;
        policy.mode = ScalingMode::Off;
        let resource = policy.cpu.clone().unwrap();
        let demand = demand.min(limit);
        // Keep the load clearly on one side of each band edge: near an edge, noise alone
        // legitimately turns events on and off.
        let clear = |edge: f64| (demand - edge * limit).abs() > 2.0 * spread * demand + 1e-3;
        // The saturation threshold is such an edge too: a throttled window gets the whole step.
        prop_assume!(clear(resource.lower) && clear(resource.upper) && clear(rescale::SATURATED));
        let key = ContainerKey::new("p", "c");
        let mut guardian = Guardian::new();
        let mut changes = Vec::new();
        let mut previous = None;
        for (i, x) in noise.iter().enumerate() {
            let usage = (demand * (1.0 + spread * x)).min(limit);
            let tick = guardian
                .tick(&policy, secs(10 * i as u64), &one(&key, cpu(usage, limit)))
                .unwrap();
            let now = tick.reports[&key][&ResourceName::Cpu].recommendation.unwrap();
            if previous.is_some_and(|p| p != now) {
                changes.push((i, previous, now));
            }
            previous = Some(now);
        }
        prop_assert!(changes.len() <= 1, "the recommendation moved: {changes:?}");
    }

    #[test]
    fn the_budget_is_never_exceeded(
        policy in cpu_only_policy(),
        budget_millis in 1000u32..6000,
        demands in prop::collection::vec(0.0f64..4.0, 2..6),
    ) {
        let mut policy = policy;
        policy.budget = Some(Budget { cpu: Some(Quantity(format!("{budget_millis}m"))), memory: None });
        let budget = f64::from(budget_millis) / 1000.0;
        let min = policy.cpu.as_ref().unwrap().min.value().unwrap();
        let mut limits: BTreeMap<ContainerKey, f64> = demands
            .iter()
            .enumerate()
            .map(|(i, _)| (ContainerKey::new(&format!("p{i}"), "c"), min))
            .collect();
        prop_assume!(limits.values().sum::<f64>() <= budget);
        let mut guardian = Guardian::new();
        for t in 0..80u64 {
            let observations = limits
                .iter()
                .zip(&demands)
                .map(|((key, limit), demand)| (key.clone(), cpu(demand.min(*limit), *limit)))
                .collect();
            let tick = guardian.tick(&policy, secs(10 * t), &observations).unwrap();
            apply(&mut limits, &tick);
            let total: f64 = limits.values().sum();
            prop_assert!(total <= budget + 1e-6, "total {total} above budget {budget} at tick {t}");
        }
    }
}
