//! Which downstream calls one stochastic (GET) request makes: µBench's algorithm.
//!
//! For each group: when `seqLen` is smaller than the group, a random subset of that size in
//! random order, otherwise every service in list order; then each selected service is called
//! with its probability (1 when not listed). Groups are independent; the caller runs them in
//! parallel and the calls of one group in sequence. Pure code over an injected RNG, so the
//! statistics are tested with a seed.

use rand::Rng;
use rand::RngExt;

/// A group of the spec, resolved to indices of the cell's downstream table.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupPlan {
    /// Downstream indices, in the spec's order.
    pub calls: Vec<usize>,
    /// Call probability of each entry of `calls`.
    pub probabilities: Vec<f64>,
    /// How many of `calls` to select.
    pub seq_len: usize,
}

impl GroupPlan {
    /// Appends to `out` the calls this group makes for one request, in call order.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R, out: &mut Vec<usize>) {
        let n = self.calls.len();
        if self.seq_len < n {
            for position in rand::seq::index::sample(rng, n, self.seq_len) {
                self.maybe_call(rng, position, out);
            }
        } else {
            for position in 0..n {
                self.maybe_call(rng, position, out);
            }
        }
    }

    fn maybe_call<R: Rng + ?Sized>(&self, rng: &mut R, position: usize, out: &mut Vec<usize>) {
        let p = self.probabilities[position];
        // `p >= 1` skips the draw: the common case costs no randomness.
        if p >= 1.0 || rng.random::<f64>() < p {
            out.push(self.calls[position]);
        }
    }
}

/// The calls of every group for one request; empty groups are dropped.
pub fn sample_groups<R: Rng + ?Sized>(groups: &[GroupPlan], rng: &mut R) -> Vec<Vec<usize>> {
    let mut out = Vec::with_capacity(groups.len());
    for group in groups {
        let mut calls = Vec::new();
        group.sample(rng, &mut calls);
        if !calls.is_empty() {
            out.push(calls);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn group(probabilities: &[f64], seq_len: usize) -> GroupPlan {
        GroupPlan {
            calls: (0..probabilities.len()).collect(),
            probabilities: probabilities.to_vec(),
            seq_len,
        }
    }

    /// Call frequency of each downstream over `n` requests.
    fn frequencies(plan: &GroupPlan, n: usize, seed: u64) -> (Vec<f64>, Vec<Vec<usize>>) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut counts = vec![0usize; plan.calls.len()];
        let mut samples = Vec::new();
        for _ in 0..n {
            let mut calls = Vec::new();
            plan.sample(&mut rng, &mut calls);
            for &c in &calls {
                counts[c] += 1;
            }
            samples.push(calls);
        }
        let freq = counts.iter().map(|&c| c as f64 / n as f64).collect();
        (freq, samples)
    }

    /// |observed - expected| within 5 standard errors of a Bernoulli(expected) mean.
    fn close(observed: f64, expected: f64, n: usize) -> bool {
        let sigma = (expected * (1.0 - expected) / n as f64).sqrt();
        (observed - expected).abs() <= 5.0 * sigma + 1e-12
    }

    #[test]
    fn whole_group_in_order_when_seq_len_covers_it() {
        let (freq, samples) = frequencies(&group(&[1.0, 1.0, 1.0], 100), 100, 1);
        assert_eq!(freq, [1.0, 1.0, 1.0]);
        assert!(samples.iter().all(|s| s == &[0, 1, 2]));
    }

    #[test]
    fn probabilities_are_honoured() {
        let n = 20_000;
        let probabilities = [0.4, 0.55, 0.8, 0.1, 0.03, 0.0, 1.0];
        let (freq, _) = frequencies(&group(&probabilities, 100), n, 42);
        for (observed, expected) in freq.iter().zip(probabilities) {
            assert!(close(*observed, expected, n), "{observed} vs {expected}");
        }
    }

    #[test]
    fn seq_len_picks_random_subsets_in_random_order() {
        let n = 20_000;
        let (freq, samples) = frequencies(&group(&[1.0; 4], 2), n, 7);
        // Each service is in a 2-of-4 subset with probability 1/2.
        for observed in &freq {
            assert!(close(*observed, 0.5, n), "{freq:?}");
        }
        assert!(samples.iter().all(|s| s.len() == 2 && s[0] != s[1]));
        // Both orders of a pair occur (random order, as Python's random.sample).
        assert!(samples.iter().any(|s| s == &[0, 1]));
        assert!(samples.iter().any(|s| s == &[1, 0]));
    }

    #[test]
    fn seq_len_and_probabilities_compose() {
        let n = 20_000;
        let (freq, _) = frequencies(&group(&[0.5, 1.0, 0.2, 0.0], 2), n, 9);
        for (observed, expected) in freq.iter().zip([0.25, 0.5, 0.1, 0.0]) {
            assert!(close(*observed, expected, n), "{observed} vs {expected}");
        }
    }

    #[test]
    fn empty_groups_are_dropped() {
        let mut rng = SmallRng::seed_from_u64(0);
        let groups = [group(&[], 1), group(&[0.0], 1), group(&[1.0], 1)];
        assert_eq!(sample_groups(&groups, &mut rng), [vec![0]]);
    }
}
