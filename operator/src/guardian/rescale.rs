//! One resource of one container: from the current limit, the usage and the policy to the
//! next limit. Pure arithmetic in base units (cores, bytes).
//!
//! Two guards make the Guardian converge where a literal reading of a policy would
//! oscillate: a scale-down never goes below the limit at which the current usage would be an
//! up event, and a scale-up never goes above the limit at which it would be a down event.
//! Serverless Containers gets the same effect by rebuilding its band around `current`; here
//! the band is a fraction of the limit, so the guard is explicit.
//!
//! The scale-up guard assumes the usage is the demand. A CPU-throttled container's usage is
//! pinned at its limit whatever the demand ([`SATURATED`]), or, when it runs in bursts, its
//! average hides bursts the quota cuts short (`cpu.throttledShare` of its CFS periods). There the guard would
//! cap every step at `usage / lower` (2.5× with the defaults) and a load step several times
//! the limit would need several actions, each after `upEvents` more windows and a cooldown.
//! A throttled container therefore gets the policy's whole step; if that overshoots, the
//! usage is a down event at the new limit and the first scale-down (floored at
//! `usage / upper`) settles it.
//!
//! A bursty container is throttled at an average usage well inside the band, so the usage
//! guard alone would take it straight back to where it was throttled, and round again. The
//! third guard is a [`Floor`]: after a throttled window, scale-downs stop above the limit it
//! was throttled at, for as long as the usage stays near what it was then.

use cellmesh_api::crd::scaling::{RescalePolicy, Resource, ResourcePolicy, ScaleAction};
use cellmesh_api::quantity;

/// Smallest step a limit moves by: 1 millicore or 1 MiB. Limits are kept on this grid.
pub fn grid(resource: Resource) -> f64 {
    match resource {
        Resource::Cpu => 0.001,
        Resource::Memory => 1024.0 * 1024.0,
    }
}

/// `value` rounded up to the resource's grid.
pub fn round_up(resource: Resource, value: f64) -> f64 {
    let step = grid(resource);
    // The small slack keeps values already on the grid (up to float noise) where they are.
    ((value / step) - 1e-9).ceil() * step
}

/// `value` rounded down to the resource's grid.
pub fn round_down(resource: Resource, value: f64) -> f64 {
    let step = grid(resource);
    ((value / step) + 1e-9).floor() * step
}

/// The policy's numbers, parsed once per tick.
#[derive(Clone, Debug)]
pub struct Bounds {
    pub min: f64,
    pub max: f64,
    pub upper: f64,
    pub lower: f64,
    /// CPU: the share of throttled periods that makes a window throttled.
    pub throttled_share: f64,
}

impl Bounds {
    pub fn from_policy(policy: &ResourcePolicy) -> Result<Self, quantity::QuantityError> {
        Ok(Self {
            min: policy.min.value()?,
            max: policy.max.value()?,
            upper: policy.upper,
            lower: policy.lower,
            throttled_share: policy.throttled_share(),
        })
    }

    /// `value` clamped to [min, max] and put on the grid inside that range.
    pub fn clamp(&self, resource: Resource, value: f64) -> f64 {
        let min = round_up(resource, self.min);
        let max = round_down(resource, self.max).max(min);
        round_up(resource, value).clamp(min, max)
    }
}

/// The limit a scale-up or scale-down step would set, before clamping.
pub fn step(action: &ScaleAction, limit: f64, usage: f64, up: bool) -> f64 {
    match action.policy {
        RescalePolicy::Amount => {
            let amount = action
                .amount
                .as_ref()
                .and_then(|a| a.value().ok())
                .unwrap_or(0.0)
                .abs();
            if up { limit + amount } else { limit - amount }
        }
        RescalePolicy::Proportional => limit * action.factor.unwrap_or(1.0),
        RescalePolicy::FitToUsage => {
            let margin = action
                .margin
                .unwrap_or(cellmesh_api::crd::scaling::DEFAULT_FIT_MARGIN);
            usage * (1.0 + margin)
        }
    }
}

/// CPU usage at or above this fraction of the limit counts as throttled: the container would
/// use more if it could, so its usage says only that the demand is at least the limit.
/// (Prometheus' `rate()` of a container pinned at its quota reads 0.97–1.0 of it.)
pub const SATURATED: f64 = 0.95;

/// Whether a CPU window hides the demand: usage pinned at the limit ([`SATURATED`]), or
/// throttled in `throttled_share` of its CPU periods or more (`cpu.throttledShare`). Memory
/// is never throttled.
pub fn throttled(
    resource: Resource,
    bounds: &Bounds,
    limit: f64,
    usage: f64,
    throttling: Option<f64>,
) -> bool {
    resource == Resource::Cpu
        && limit > 0.0
        && (usage >= SATURATED * limit || throttling.is_some_and(|t| t >= bounds.throttled_share))
}

/// Where scale-downs stop after a throttled window, and until when.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Floor {
    /// The highest limit the container was throttled at (since the floor was last reset).
    pub throttled_limit: f64,
    /// Its usage in the last throttled window.
    pub usage: f64,
}

impl Floor {
    /// The least limit a scale-down may set: `throttled_limit / upper`, where the usage it
    /// was throttled at (at most that limit) is no up event. Each throttled window at the
    /// floor raises it by that factor, so a bursty container climbs to the limit that stops
    /// its throttling in a few steps, and then stays.
    pub fn limit(&self, bounds: &Bounds) -> f64 {
        if bounds.upper > 0.0 {
            self.throttled_limit / bounds.upper
        } else {
            self.throttled_limit
        }
    }

    /// Whether the demand that was throttled is gone: the usage fell below `lower` × the
    /// usage of the last throttled window (with the defaults, to 40 % of it).
    pub fn expired(&self, bounds: &Bounds, usage: f64) -> bool {
        usage < bounds.lower * self.usage
    }

    /// The floor after a throttled window at `limit` with `usage`.
    pub fn after_throttled(previous: Option<Self>, limit: f64, usage: f64) -> Self {
        Self {
            throttled_limit: previous.map_or(limit, |f| f.throttled_limit.max(limit)),
            usage,
        }
    }
}

/// The next limit after a scale-up: the policy's step, clamped to [min, max], and capped so
/// the usage is not a down event at the new limit, unless the container is [`throttled`].
/// Then its usage is no measure of the demand: the step is not capped, and it goes at least
/// to `limit / upper` (the [`Floor`] the throttling leaves), so a `fitToUsage` step from a
/// bursty container's low average still grows the limit.
pub fn scale_up(
    resource: Resource,
    action: &ScaleAction,
    bounds: &Bounds,
    limit: f64,
    usage: f64,
    throttled: bool,
) -> f64 {
    let wanted = bounds.clamp(resource, step(action, limit, usage, true));
    if throttled {
        let floor = Floor::after_throttled(None, limit, usage).limit(bounds);
        return wanted.max(bounds.clamp(resource, floor));
    }
    if bounds.lower > 0.0 && usage > 0.0 {
        let ceiling = round_down(resource, usage / bounds.lower);
        if wanted > ceiling {
            // Still above the current limit: up events mean usage > upper × limit, so the
            // ceiling usage / lower lies above the limit whenever lower < upper.
            return bounds.clamp(resource, ceiling.max(limit));
        }
    }
    wanted
}

/// The next limit after a scale-down: the policy's step, floored so the usage is not an up
/// event at the new limit (and, for memory, never below the usage) and at the [`Floor`] left
/// by throttling, if any, clamped to [min, max] and never above the current limit.
pub fn scale_down(
    resource: Resource,
    action: &ScaleAction,
    bounds: &Bounds,
    limit: f64,
    usage: f64,
    floor: Option<f64>,
) -> f64 {
    let mut wanted = step(action, limit, usage, false);
    if bounds.upper > 0.0 {
        wanted = wanted.max(usage / bounds.upper);
    }
    if let Some(floor) = floor {
        wanted = wanted.max(floor);
    }
    if resource == Resource::Memory {
        wanted = wanted.max(usage);
    }
    bounds.clamp(resource, wanted.min(limit))
}

/// The memory limit after an out-of-memory kill: max(factor × limit, limit + min bump),
/// clamped to [min, max].
pub fn oom_bump(bounds: &Bounds, factor: f64, min_bump: f64, limit: f64) -> f64 {
    bounds.clamp(Resource::Memory, (limit * factor).max(limit + min_bump))
}

/// The least memory limit a scale-down may set after an out-of-memory kill at
/// `killed_limit`: the demand reached at least that limit, so the limit at which that usage
/// is no up event, `killed_limit / upper` (the memory twin of [`Floor::limit`]).
pub fn oom_floor(bounds: &Bounds, killed_limit: f64) -> f64 {
    if bounds.upper > 0.0 {
        killed_limit / bounds.upper
    } else {
        killed_limit
    }
}

/// Relative change of a decided target below which the recommendation keeps its value:
/// targets computed from usage (`fitToUsage`, the guards) move with its noise, typically a
/// few percent from one window to the next.
pub const RECOMMENDATION_TOLERANCE: f64 = 0.1;

/// The recommendation to report, given the last one reported (`previous`), the current limit
/// and usage, and the tick's decided target (with whether it is an OOM bump), if any.
///
/// Hysteresis so the status does not follow noisy usage:
/// - an OOM bump is always the recommendation;
/// - a decided target replaces the previous recommendation unless it lies on the same side
///   of the limit and within [`RECOMMENDATION_TOLERANCE`] of it (or two grid steps), and,
///   for memory, the previous one is not below the usage;
/// - without a decision the previous recommendation stays while the usage is inside the
///   band at it, or while the usage is outside the band at the current limit too (events
///   are being counted towards a decision); it falls back to the limit when only the limit
///   has the usage inside its band (the load changed and no action is needed any more).
///
/// A previous value outside [min, max] is forgotten.
pub fn recommend(
    resource: Resource,
    bounds: &Bounds,
    previous: Option<f64>,
    limit: f64,
    usage: Option<f64>,
    decided: Option<(f64, bool)>,
) -> f64 {
    // A previous value outside [min, max] (the limit of a pod older than the policy, or a
    // policy that changed) is no anchor.
    let previous =
        previous.filter(|&p| (bounds.clamp(resource, p) - p).abs() < grid(resource) / 2.0);
    let in_band = |at: f64| {
        usage.is_none_or(|u| {
            u >= bounds.lower * at
                && u <= bounds.upper * at
                && (resource != Resource::Memory || u <= at)
        })
    };
    match (decided, previous) {
        (Some((target, true)), _) => target,
        (Some((target, false)), Some(previous)) => {
            let same_side = (target - limit).signum() == (previous - limit).signum()
                && (previous - limit).abs() >= grid(resource) / 2.0;
            let tolerance = (previous * RECOMMENDATION_TOLERANCE).max(2.0 * grid(resource));
            // Memory is never recommended below its usage.
            let fits = resource != Resource::Memory || usage.is_none_or(|u| u <= previous);
            if same_side && fits && (target - previous).abs() <= tolerance {
                previous
            } else {
                target
            }
        }
        (Some((target, false)), None) => target,
        (None, None) => limit,
        (None, Some(previous)) => {
            if in_band(previous) || !in_band(limit) {
                previous
            } else {
                limit
            }
        }
    }
}

/// The request that keeps the original request:limit ratio at the new limit, so the pod's
/// QoS class stays what it was: equal stays equal (Guaranteed), below stays below.
pub fn scaled_request(resource: Resource, request: f64, limit: f64, new_limit: f64) -> f64 {
    if limit <= 0.0 || (request - limit).abs() <= grid(resource) / 2.0 {
        return new_limit;
    }
    let scaled = round_up(resource, request * new_limit / limit).max(grid(resource));
    // Strictly below the limit, or a Burstable pod could become Guaranteed.
    scaled.min(new_limit - grid(resource)).max(grid(resource))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellmesh_api::crd::scaling::DEFAULT_THROTTLED_SHARE;

    fn bounds(min: f64, max: f64) -> Bounds {
        Bounds {
            min,
            max,
            upper: 0.8,
            lower: 0.4,
            throttled_share: DEFAULT_THROTTLED_SHARE,
        }
    }

    /// A scale-up judged throttled from the usage alone, as without a throttling query.
    fn up(resource: Resource, action: &ScaleAction, b: &Bounds, limit: f64, usage: f64) -> f64 {
        let throttled = throttled(resource, b, limit, usage, None);
        scale_up(resource, action, b, limit, usage, throttled)
    }

    fn down(resource: Resource, action: &ScaleAction, b: &Bounds, limit: f64, usage: f64) -> f64 {
        scale_down(resource, action, b, limit, usage, None)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn amount_up_adds_the_step_within_max() {
        let action = ScaleAction::amount("750m");
        let b = bounds(0.1, 2.0);
        // 0.45 / 0.4 = 1.125 caps 1.25: at 1.25 the usage would be a down event.
        assert!(close(up(Resource::Cpu, &action, &b, 0.5, 0.45), 1.125));
        // max caps 2.25.
        assert!(close(up(Resource::Cpu, &action, &b, 1.5, 1.4), 2.0));
    }

    #[test]
    fn a_throttled_container_gets_the_whole_step() {
        let action = ScaleAction::amount("750m");
        let b = bounds(0.1, 2.0);
        // 0.2 pinned at 0.2: the demand is unknown, so no `usage / lower` cap (0.5).
        assert!(close(up(Resource::Cpu, &action, &b, 0.2, 0.2), 0.95));
        assert!(close(up(Resource::Cpu, &action, &b, 0.2, 0.195), 0.95));
        // Just below saturation the guard holds: 0.18 / 0.4.
        assert!(close(up(Resource::Cpu, &action, &b, 0.2, 0.18), 0.45));
        // Memory at its limit is no throttling: the guard holds.
        let mi = 1024.0 * 1024.0;
        let mb = Bounds {
            min: 0.0,
            max: 8192.0 * mi,
            upper: 0.8,
            lower: 0.4,
            throttled_share: DEFAULT_THROTTLED_SHARE,
        };
        let up = up(
            Resource::Memory,
            &ScaleAction::amount("1Gi"),
            &mb,
            100.0 * mi,
            100.0 * mi,
        );
        assert!(close(up, 250.0 * mi), "{}", up / mi);
    }

    #[test]
    fn throttled_periods_count_as_throttled_below_the_limit() {
        let b = bounds(0.1, 4.0);
        assert!(throttled(Resource::Cpu, &b, 1.0, 0.5, Some(0.25)));
        assert!(!throttled(Resource::Cpu, &b, 1.0, 0.5, Some(0.24)));
        assert!(!throttled(Resource::Cpu, &b, 1.0, 0.5, None));
        assert!(throttled(Resource::Cpu, &b, 1.0, 0.96, Some(0.0)), "pinned");
        assert!(!throttled(Resource::Memory, &b, 1.0, 1.0, Some(1.0)));
        let sensitive = Bounds {
            throttled_share: 0.1,
            ..b.clone()
        };
        assert!(throttled(Resource::Cpu, &sensitive, 1.0, 0.5, Some(0.12)));
        // A bursty container at half its limit gets the whole step, not `usage / lower`.
        let action = ScaleAction::amount("750m");
        assert!(close(
            scale_up(Resource::Cpu, &action, &b, 1.0, 0.5, true),
            1.75
        ));
        assert!(close(
            scale_up(Resource::Cpu, &action, &b, 1.0, 0.5, false),
            1.25
        ));
        // fitToUsage from that average (0.75) would shrink it: it grows to limit / upper.
        let fit = ScaleAction::fit_to_usage();
        assert!(close(
            scale_up(Resource::Cpu, &fit, &b, 1.0, 0.5, true),
            1.25
        ));
    }

    #[test]
    fn the_throttling_floor_stops_scale_downs_above_the_throttled_limit() {
        let b = bounds(0.1, 4.0);
        let floor = Floor::after_throttled(None, 1.0, 0.5);
        assert!(close(floor.limit(&b), 1.25));
        // fitToUsage would go to 0.75, where the bursts were throttled.
        let new = scale_down(
            Resource::Cpu,
            &ScaleAction::fit_to_usage(),
            &b,
            1.75,
            0.5,
            Some(floor.limit(&b)),
        );
        assert!(close(new, 1.25), "{new}");
        // Never above the current limit.
        let new = scale_down(
            Resource::Cpu,
            &ScaleAction::fit_to_usage(),
            &b,
            1.1,
            0.5,
            Some(floor.limit(&b)),
        );
        assert!(close(new, 1.1), "{new}");
        // Throttled again at the floor: it rises by 1 / upper, and keeps the highest limit.
        let higher = Floor::after_throttled(Some(floor), 1.25, 0.5);
        assert!(close(higher.limit(&b), 1.5625));
        assert!(close(
            Floor::after_throttled(Some(higher), 0.2, 0.5).throttled_limit,
            1.25
        ));
        // The demand is gone once usage falls below lower × its throttled usage.
        assert!(!floor.expired(&b, 0.2));
        assert!(floor.expired(&b, 0.19));
    }

    #[test]
    fn fit_to_usage_down_lands_usage_inside_the_band() {
        let b = bounds(0.1, 4.0);
        let new = down(Resource::Cpu, &ScaleAction::fit_to_usage(), &b, 2.0, 0.3);
        assert!(close(new, 0.45), "{new}");
        let ratio = 0.3 / new;
        assert!(ratio > b.lower && ratio < b.upper);
    }

    #[test]
    fn down_never_below_the_up_threshold_nor_below_min() {
        let b = bounds(0.25, 4.0);
        let big_step = ScaleAction::amount("3");
        // 1.0 usage: below 1.25 the usage would be an up event.
        assert!(close(down(Resource::Cpu, &big_step, &b, 3.0, 1.0), 1.25));
        assert!(close(down(Resource::Cpu, &big_step, &b, 3.0, 0.0), 0.25));
    }

    #[test]
    fn memory_never_below_usage() {
        let b = Bounds {
            min: 0.0,
            max: 8e9,
            upper: 1.0,
            lower: 0.1,
            throttled_share: DEFAULT_THROTTLED_SHARE,
        };
        let mi = 1024.0 * 1024.0;
        let new = down(
            Resource::Memory,
            &ScaleAction::amount("1Gi"),
            &b,
            1200.0 * mi,
            700.0 * mi,
        );
        assert!(new >= 700.0 * mi, "{new}");
    }

    #[test]
    fn oom_bump_is_factor_or_minimum_whichever_is_more() {
        let mi = 1024.0 * 1024.0;
        let b = bounds(0.0, 64.0 * 1024.0 * mi);
        assert!(close(oom_bump(&b, 1.2, 100.0 * mi, 200.0 * mi), 300.0 * mi));
        assert!(close(
            oom_bump(&b, 1.2, 100.0 * mi, 1000.0 * mi),
            1200.0 * mi
        ));
    }

    #[test]
    fn requests_keep_their_ratio_and_the_qos_class() {
        // Guaranteed stays Guaranteed.
        assert!(close(scaled_request(Resource::Cpu, 0.5, 0.5, 1.25), 1.25));
        // Burstable at 1:2 stays 1:2.
        assert!(close(scaled_request(Resource::Cpu, 0.25, 0.5, 1.0), 0.5));
        // Burstable never rounds up into equality.
        assert!(scaled_request(Resource::Cpu, 0.999, 1.0, 0.002) < 0.002);
    }

    #[test]
    fn grid_rounding() {
        assert!(close(round_up(Resource::Cpu, 0.0301), 0.031));
        assert!(close(round_up(Resource::Cpu, 0.03), 0.03));
        assert!(close(round_down(Resource::Cpu, 0.0309), 0.03));
    }
}
