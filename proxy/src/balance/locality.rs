//! Smooth weighted choice of a destination locality.
//!
//! The weight row for this proxy's locality comes from the coordinator in basis points
//! (every row sums to 10,000). Choosing by random draw gives the right share on average
//! but in bursts; this uses the smooth weighted round-robin nginx uses for upstreams:
//! every pick adds each entry's weight to its credit, takes the entry with the most
//! credit and charges it the total. Over any 10,000 picks each entry is chosen exactly
//! its weight in times, and a 1% entry is chosen once every hundred picks, evenly spaced.

/// One weight row's state.
#[derive(Debug, Clone, Default)]
pub struct SmoothWeights {
    weights: Vec<u32>,
    credit: Vec<i64>,
    total: i64,
}

impl SmoothWeights {
    /// A chooser over `weights` (any unit; zero weights are never chosen).
    pub fn new(weights: &[u32]) -> SmoothWeights {
        SmoothWeights {
            weights: weights.to_vec(),
            credit: vec![0; weights.len()],
            total: weights.iter().map(|&w| i64::from(w)).sum(),
        }
    }

    /// Replaces the weights (a new push), keeping the credit of entries that stay, so a
    /// small change of weights does not restart the sequence.
    pub fn update(&mut self, weights: &[u32]) {
        self.credit.resize(weights.len(), 0);
        self.weights = weights.to_vec();
        self.total = weights.iter().map(|&w| i64::from(w)).sum();
        // Credits from the old weights are bounded by the old total; clamp them to the
        // new one so an entry that lost weight cannot be owed a burst.
        for c in &mut self.credit {
            *c = (*c).clamp(-self.total, self.total);
        }
    }

    /// The index of the next entry, or `None` when every weight is zero.
    pub fn pick(&mut self) -> Option<usize> {
        self.pick_among(|_| true)
    }

    /// The next entry among those `allowed` (e.g. localities with an endpoint left),
    /// keeping the shares of the allowed ones in proportion.
    pub fn pick_among(&mut self, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, &w) in self.weights.iter().enumerate() {
            if w == 0 || !allowed(i) {
                continue;
            }
            self.credit[i] += i64::from(w);
            total += i64::from(w);
            if best.is_none_or(|b| self.credit[i] > self.credit[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.credit[chosen] -= total;
        Some(chosen)
    }

    /// The weights in use.
    pub fn weights(&self) -> &[u32] {
        &self.weights
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(w: &mut SmoothWeights, picks: usize) -> Vec<usize> {
        let mut c = vec![0; w.weights().len()];
        for _ in 0..picks {
            c[w.pick().expect("a weight")] += 1;
        }
        c
    }

    #[test]
    fn a_split_is_within_two_percent_over_ten_thousand_requests() {
        let mut w = SmoothWeights::new(&[5_000, 3_000, 2_000]);
        let c = counts(&mut w, 10_000);
        for (got, want) in c.iter().zip([5_000, 3_000, 2_000]) {
            assert!(got.abs_diff(want) <= 200, "{c:?}");
        }
        // In fact exact: smooth round-robin repeats every `total` picks.
        assert_eq!(c, vec![5_000, 3_000, 2_000]);
    }

    #[test]
    fn a_one_percent_weight_gets_one_request_in_a_hundred_not_a_burst() {
        let mut w = SmoothWeights::new(&[9_900, 100]);
        let picks: Vec<usize> = (0..10_000).map(|_| w.pick().unwrap()).collect();
        let small: Vec<usize> = picks
            .iter()
            .enumerate()
            .filter(|(_, p)| **p == 1)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(small.len(), 100);
        // Never two in a row, and evenly spaced.
        for gap in small.windows(2).map(|w| w[1] - w[0]) {
            assert_eq!(gap, 100);
        }
    }

    #[test]
    fn zero_weights_are_never_chosen_and_all_zero_chooses_nothing() {
        let mut w = SmoothWeights::new(&[0, 10_000, 0]);
        assert_eq!(counts(&mut w, 100), vec![0, 100, 0]);
        assert_eq!(SmoothWeights::new(&[0, 0]).pick(), None);
        assert_eq!(SmoothWeights::new(&[]).pick(), None);
    }

    #[test]
    fn excluded_entries_give_their_share_to_the_others_in_proportion() {
        let mut w = SmoothWeights::new(&[6_000, 3_000, 1_000]);
        let mut c = [0usize; 3];
        for _ in 0..4_000 {
            c[w.pick_among(|i| i != 0).unwrap()] += 1;
        }
        assert_eq!(c, [0, 3_000, 1_000]);
    }

    #[test]
    fn a_new_push_takes_effect_at_once_without_a_burst() {
        let mut w = SmoothWeights::new(&[10_000, 0]);
        counts(&mut w, 777);
        w.update(&[5_000, 5_000]);
        let c = counts(&mut w, 1_000);
        assert!(c[0].abs_diff(500) <= 2 && c[1].abs_diff(500) <= 2, "{c:?}");
    }
}
