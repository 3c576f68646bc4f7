//! Random identifiers for the hot path: call ids, trace ids, correlation ids.
//!
//! [`uuid4`] makes version 4 UUIDs like [`uuid::Uuid::new_v4`], but from a per-thread
//! SplitMix64 generator seeded once from the operating system, instead of one
//! `getrandom` system call per id (three or more per RPC call). The ids are unique (122
//! random bits from a generator with a 2⁶⁴ period per thread, seeded independently),
//! not secret: never use them as tokens or keys.

use std::cell::Cell;

use uuid::Uuid;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let bytes = *Uuid::new_v4().as_bytes();
    let (high, _) = bytes.split_at(8);
    u64::from_le_bytes(high.try_into().unwrap_or([0x5e; 8]))
}

/// SplitMix64's next output (Steele, Lea and Flood, 2014).
fn next(state: &Cell<u64>) -> u64 {
    let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
    state.set(s);
    let mut z = s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random version 4 UUID, from a fast per-thread generator (see the module docs).
///
/// ```
/// let id = nameko_core::ids::uuid4();
/// assert_eq!(id.get_version_num(), 4);
/// assert_ne!(id, nameko_core::ids::uuid4());
/// ```
pub fn uuid4() -> Uuid {
    let (high, low) = STATE.with(|state| (next(state), next(state)));
    let mut bytes = [0_u8; 16];
    bytes[..8].copy_from_slice(&high.to_le_bytes());
    bytes[8..].copy_from_slice(&low.to_le_bytes());
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// A new [`uuid4`] as 32 lowercase hex digits (what trace ids are made of), written
/// without the formatting machinery.
///
/// ```
/// let id = nameko_core::ids::uuid4_simple();
/// assert_eq!(id.len(), 32);
/// assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
/// ```
pub fn uuid4_simple() -> String {
    let mut buffer = [0_u8; uuid::fmt::Simple::LENGTH];
    uuid4().simple().encode_lower(&mut buffer).to_owned()
}

/// `<service>.<method>.<uuid4>`: a worker's call id, written into a string of its final
/// size.
///
/// ```
/// let id = nameko_core::ids::call_id("greeting", "greet");
/// assert!(id.starts_with("greeting.greet."));
/// assert_eq!(id.len(), "greeting.greet.".len() + 36);
/// ```
pub fn call_id(service: &str, method: &str) -> String {
    let mut buffer = [0_u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid4().hyphenated().encode_lower(&mut buffer);
    let mut call_id = String::with_capacity(service.len() + method.len() + 2 + id.len());
    call_id.push_str(service);
    call_id.push('.');
    call_id.push_str(method);
    call_id.push('.');
    call_id.push_str(id);
    call_id
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_version_4_and_distinct_across_threads() {
        let mine: Vec<Uuid> = (0..10_000).map(|_| uuid4()).collect();
        let theirs: Vec<Uuid> = std::thread::spawn(|| (0..10_000).map(|_| uuid4()).collect())
            .join()
            .unwrap();
        let all: HashSet<Uuid> = mine.iter().chain(&theirs).copied().collect();
        assert_eq!(all.len(), 20_000);
        assert!(all.iter().all(|id| id.get_version_num() == 4));
        assert!(all.iter().all(|id| id.get_variant() == uuid::Variant::RFC4122));
    }
}
