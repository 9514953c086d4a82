//! Growth of the tables that hold an entry per client (P6). A `Vec` doubles its capacity, so
//! just past a power of two nearly half of such a table is empty — at 10,000 clients, 6,000
//! unused entries in each of them. These tables grow by a quarter instead: more copies while
//! a crowd arrives, a fraction of the idle memory once it is there.

use slab::Slab;

/// Entries added at least, so that small tables do not grow one entry at a time.
const MIN_GROWTH: usize = 16;

/// How much a full table of `capacity` entries grows by.
fn growth(capacity: usize) -> usize {
    capacity / 4 + MIN_GROWTH
}

/// Makes room for one more entry in `slab`, growing it by a quarter when it is full.
pub fn make_room<T>(slab: &mut Slab<T>) {
    if slab.len() == slab.capacity() {
        slab.reserve_exact(growth(slab.capacity()));
    }
}

/// Stores `x` at index `i` of a table indexed like a slab (by another table's keys), growing it
/// by a quarter when `i` is past its end.
pub fn put<T>(v: &mut Vec<Option<T>>, i: usize, x: T) {
    if v.len() <= i {
        if v.capacity() <= i {
            let needed = i + 1 - v.len();
            v.reserve_exact(needed.max(growth(v.capacity())));
        }
        v.resize_with(i + 1, || None);
    }
    v[i] = Some(x);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_slab_grows_by_a_quarter() {
        let mut s: Slab<u32> = Slab::with_capacity(1000);
        for i in 0..1000 {
            make_room(&mut s);
            s.insert(i);
        }
        assert_eq!(s.capacity(), 1000);
        make_room(&mut s);
        assert_eq!(s.capacity(), 1000 + 250 + MIN_GROWTH);
        // Room left: nothing changes.
        s.insert(0);
        make_room(&mut s);
        assert_eq!(s.capacity(), 1000 + 250 + MIN_GROWTH);
    }

    #[test]
    fn put_fills_the_gap_and_grows_by_a_quarter() {
        let mut v: Vec<Option<u32>> = Vec::new();
        put(&mut v, 3, 7);
        assert_eq!(v, vec![None, None, None, Some(7)]);
        assert_eq!(v.capacity(), MIN_GROWTH);
        for i in 4..1000 {
            put(&mut v, i, 1);
        }
        assert!(v.capacity() < 1000 * 5 / 4 + MIN_GROWTH, "{}", v.capacity());
        put(&mut v, 3, 8);
        assert_eq!(v[3], Some(8));
    }
}
