//! Contribution bounding (DESIGN section 7): within one measure domain a client contributes at most one
//! trajectory per target-group row and at most `max_cells_per_client` rows. What is dropped follows a
//! keyed order, HMAC-SHA256(order key, client || trajectory) ascending: deterministic for the service,
//! unpredictable and unsteerable for anyone without the key.

use std::fmt;

use ring::hmac;

/// The key of the surplus-dropping order. `Debug` never shows it.
pub(crate) struct OrderKey(hmac::Key);

impl OrderKey {
    pub fn new(key: &[u8; 32]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    /// The position of a trajectory in the keyed order: lower comes first and is kept.
    pub fn rank(&self, client: &[u8; 32], trajectory: &[u8; 32]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(client);
        ctx.update(trajectory);
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

impl fmt::Debug for OrderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OrderKey(<redacted>)")
    }
}

/// Chooses what one client keeps in one domain. `items[i]` is `(row, rank)` of the client's i-th
/// eligible trajectory. Per row the lowest rank is kept; of those, the `max_rows` lowest. Returns the
/// kept positions in ascending order. Equal ranks fall to the earlier position, so the result is a
/// function of the input alone.
pub(crate) fn select<K: PartialEq + Copy, R: Ord>(items: &[(K, R)], max_rows: usize) -> Vec<usize> {
    // best[row] = position of the lowest rank seen in that row; a client has few trajectories, so a
    // linear scan beats any map.
    let mut best: Vec<(K, usize)> = Vec::with_capacity(items.len());
    for (pos, (row, rank)) in items.iter().enumerate() {
        match best.iter_mut().find(|(r, _)| r == row) {
            Some((_, kept)) => {
                if *rank < items[*kept].1 {
                    *kept = pos;
                }
            }
            None => best.push((*row, pos)),
        }
    }
    best.sort_by(|(_, a), (_, b)| items[*a].1.cmp(&items[*b].1).then(a.cmp(b)));
    best.truncate(max_rows);
    let mut kept: Vec<usize> = best.into_iter().map(|(_, pos)| pos).collect();
    kept.sort_unstable();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The bounding rule itself: never twice in one row, never more rows than allowed, and nothing
        /// dropped that the rule did not require to be dropped.
        #[test]
        fn a_client_never_exceeds_its_rows(
            items in proptest::collection::vec((0u16..6, 0u32..20), 0..14),
            max_rows in 1usize..4,
        ) {
            let kept = select(&items, max_rows);
            let mut rows: Vec<u16> = kept.iter().map(|p| items[*p].0).collect();
            let n = rows.len();
            rows.sort_unstable();
            rows.dedup();
            prop_assert_eq!(rows.len(), n, "twice in one row");
            prop_assert!(n <= max_rows, "more rows than allowed");
            let mut all_rows: Vec<u16> = items.iter().map(|i| i.0).collect();
            all_rows.sort_unstable();
            all_rows.dedup();
            prop_assert_eq!(n, all_rows.len().min(max_rows), "dropped more than needed");
            // Each kept trajectory is the lowest of its row, and no dropped row beats a kept one.
            for p in &kept {
                let (row, rank) = items[*p];
                prop_assert!(items.iter().all(|(r, k)| *r != row || *k >= rank));
            }
            let worst_kept = kept.iter().map(|p| items[*p].1).max();
            for (row, rank) in &items {
                if !rows.contains(row) {
                    prop_assert!(worst_kept.is_some_and(|w| *rank >= w));
                }
            }
            prop_assert_eq!(select(&items, max_rows), kept, "not deterministic");
        }
    }

    #[test]
    fn the_keyed_order_decides_what_is_dropped() {
        let client = [7u8; 32];
        let trajectories: Vec<[u8; 32]> = (1..=4u8).map(|i| [i; 32]).collect();
        let key_a = OrderKey::new(&[1; 32]);
        let key_b = OrderKey::new(&[2; 32]);
        let rank = |k: &OrderKey| -> Vec<(u16, [u8; 32])> {
            trajectories
                .iter()
                .map(|t| (0u16, k.rank(&client, t)))
                .collect()
        };
        // The rank is HMAC-SHA256(key, client || trajectory), checked against ring directly.
        let direct = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &[1; 32]),
            &[client, trajectories[0]].concat(),
        );
        assert_eq!(rank(&key_a)[0].1.as_slice(), direct.as_ref());
        let keep_a = select(&rank(&key_a), 1);
        let lowest_a = (0..4)
            .min_by_key(|i| rank(&key_a)[*i].1)
            .expect("four trajectories");
        assert_eq!(keep_a, vec![lowest_a]);
        assert_eq!(select(&rank(&key_a), 1), keep_a, "same key, same choice");
        // Some key among a handful keeps a different trajectory: the key, not the input order, decides.
        let other = (2..40u8).any(|b| select(&rank(&OrderKey::new(&[b; 32])), 1) != keep_a);
        assert!(other);
        assert_eq!(select(&rank(&key_b), 1).len(), 1);
    }

    #[test]
    fn order_key_debug_is_redacted() {
        assert_eq!(
            format!("{:?}", OrderKey::new(&[9; 32])),
            "OrderKey(<redacted>)"
        );
    }
}
