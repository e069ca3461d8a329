//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4): builds the
//! lookup table a service's new flows are spread with.
//!
//! Every node must build the same table from the same backend set, whatever order
//! the configuration lists them in (mode dsr keeps flows across a VIP move only
//! because of that), so backends are identified by a canonical byte string and
//! sorted by it, and the hashes are fixed functions defined here, not std's
//! randomly keyed hasher.

use thiserror::Error;

/// Table sizes must be prime so every skip value generates a full permutation.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error("Maglev table size {0} is not a prime; use a prime such as 16381 or 65537")]
    NotPrime(u32),
    #[error("Maglev table size {size} is out of range: it must be a prime between {min} and {max}")]
    OutOfRange { size: u32, min: u32, max: u32 },
    #[error("duplicate backend in a Maglev table: {0:?}")]
    Duplicate(Vec<u8>),
}

/// Smallest table accepted: smaller tables give poor spread.
pub const MIN_SIZE: u32 = 251;

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = n as u64;
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

pub fn check_size(size: u32) -> Result<(), MaglevError> {
    if !(MIN_SIZE..=vip_common::MAGLEV_MAX_SIZE).contains(&size) {
        return Err(MaglevError::OutOfRange {
            size,
            min: MIN_SIZE,
            max: vip_common::MAGLEV_MAX_SIZE,
        });
    }
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    Ok(())
}

/// FNV-1a, 64 bit, with a seed folded in first: stable across versions,
/// platforms and processes.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short inputs; finish with a 64-bit avalanche
    // (splitmix64's finaliser).
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Builds a Maglev table of `size` slots over `backends`, each given as
/// (canonical identity bytes, value stored in the table). Returns the values per
/// slot; an empty backend list gives an empty vector (the service has no table).
pub fn build<T: Copy>(size: u32, backends: &[(Vec<u8>, T)]) -> Result<Vec<T>, MaglevError> {
    check_size(size)?;
    if backends.is_empty() {
        return Ok(Vec::new());
    }
    let mut sorted: Vec<&(Vec<u8>, T)> = backends.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for w in sorted.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(MaglevError::Duplicate(w[0].0.clone()));
        }
    }
    let m = size as u64;
    // (offset, skip, next) per backend, section 3.4 pseudocode.
    let mut perm: Vec<(u64, u64, u64)> = sorted
        .iter()
        .map(|(id, _)| {
            let offset = fnv1a(0x6d61_676c_6576_3031, id) % m;
            let skip = fnv1a(0x736b_6970_7669_7064, id) % (m - 1) + 1;
            (offset, skip, 0)
        })
        .collect();
    let mut table: Vec<Option<T>> = vec![None; size as usize];
    let mut filled = 0u32;
    'outer: loop {
        for (i, (offset, skip, next)) in perm.iter_mut().enumerate() {
            let mut c = (*offset + *next * *skip) % m;
            while table[c as usize].is_some() {
                *next += 1;
                c = (*offset + *next * *skip) % m;
            }
            table[c as usize] = Some(sorted[i].1);
            *next += 1;
            filled += 1;
            if filled == size {
                break 'outer;
            }
        }
    }
    Ok(table.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vip_common::MAGLEV_DEFAULT_SIZE;

    fn backends(n: usize) -> Vec<(Vec<u8>, u32)> {
        (0..n)
            .map(|i| {
                (
                    format!("10.0.{}.{}:6443", i / 250, i % 250 + 1).into_bytes(),
                    i as u32,
                )
            })
            .collect()
    }

    #[test]
    fn sizes_are_checked() {
        assert!(check_size(16381).is_ok());
        assert!(check_size(65537).is_ok());
        assert_eq!(check_size(16380), Err(MaglevError::NotPrime(16380)));
        assert!(matches!(
            check_size(65539),
            Err(MaglevError::OutOfRange { .. })
        ));
        assert!(matches!(check_size(7), Err(MaglevError::OutOfRange { .. })));
    }

    #[test]
    fn empty_backends_give_no_table() {
        assert_eq!(
            build::<u32>(MAGLEV_DEFAULT_SIZE, &[]).expect("build"),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let b = vec![(b"a".to_vec(), 1u32), (b"a".to_vec(), 2u32)];
        assert!(matches!(
            build(MAGLEV_DEFAULT_SIZE, &b),
            Err(MaglevError::Duplicate(_))
        ));
    }

    #[test]
    fn order_of_the_input_does_not_matter() {
        let b = backends(5);
        let mut r = b.clone();
        r.reverse();
        r.swap(0, 2);
        assert_eq!(
            build(MAGLEV_DEFAULT_SIZE, &b).expect("build"),
            build(MAGLEV_DEFAULT_SIZE, &r).expect("build")
        );
    }

    /// Distribution within 1% of even for 3..=64 backends at the default size.
    #[test]
    fn distribution_is_even() {
        for n in 3..=64 {
            let t = build(MAGLEV_DEFAULT_SIZE, &backends(n)).expect("build");
            assert_eq!(t.len(), MAGLEV_DEFAULT_SIZE as usize);
            let mut counts = vec![0u32; n];
            for v in &t {
                counts[*v as usize] += 1;
            }
            let even = MAGLEV_DEFAULT_SIZE as f64 / n as f64;
            for (i, c) in counts.iter().enumerate() {
                let dev = (*c as f64 - even).abs() / even;
                assert!(
                    dev <= 0.01,
                    "{n} backends: backend {i} has {c} slots, {:.2}% off even",
                    dev * 100.0
                );
            }
        }
    }

    /// Removing one backend reassigns its own slots and very few others, at the
    /// default size. Measured worst case over every removed backend: 0.09% (3
    /// backends), 0.46% (7), 0.77% (8); Maglev's cascade grows with the backend
    /// count and passes 1% from 10 backends on (1.39% at 10). Control planes run 3,
    /// 5 or 7 apiservers, so the 1% bound is asserted up to 9 and a 2% bound (a
    /// regression guard, not a goal) above.
    #[test]
    fn removal_disturbs_few_other_slots() {
        for n in 3..=24 {
            let bound = if n <= 9 { 0.01 } else { 0.02 };
            let all = backends(n);
            let before = build(MAGLEV_DEFAULT_SIZE, &all).expect("build");
            for gone in 0..n as u32 {
                let rest: Vec<_> = all.iter().filter(|b| b.1 != gone).cloned().collect();
                let after = build(MAGLEV_DEFAULT_SIZE, &rest).expect("build");
                let others = before.iter().filter(|v| **v != gone).count();
                let moved = before
                    .iter()
                    .zip(&after)
                    .filter(|(b, a)| **b != gone && b != a)
                    .count();
                let frac = moved as f64 / others as f64;
                assert!(
                    frac < bound,
                    "{n} backends, removing {gone}: {moved} of {others} other slots moved ({:.2}%)",
                    frac * 100.0
                );
                assert!(
                    after.iter().all(|v| *v != gone),
                    "removed backend still in the table"
                );
            }
        }
    }
}
