//! Byte copies and comparisons for the static (musl) binary, which exports
//! them as `memcpy`, `memmove`, `memcmp` and `bcmp` (src/main.rs).
//!
//! Why replace libc's: musl's x86_64 `memcpy` aligns the destination with
//! single `movsb` instructions and copies the rest with `rep movsq`; both
//! are microcoded and take tens of cycles before the first byte, whatever
//! the size. Its `memmove` copies an overlap backwards with `std; rep
//! movsq`, which no CPU speeds up, and its `memcmp` goes byte by byte. A
//! sync makes ~220 copies per employee, 70 % of them of 16 bytes or fewer
//! (serde_json's writer, string clones, bincode), and redb shifts a leaf's
//! entries up with a memmove on every insert. Measured on a first import of
//! 100k employees: `memcpy` and `memmove` were 22 % of the static binary's
//! CPU samples (21.7 million and 1.1 million calls), and the sync's CPU fell
//! from 1.75–1.88 s to 1.23–1.36 s with these (BENCHMARKS.md, session 9).
//! glibc picks vector routines per CPU; these are the usual shapes instead:
//! up to 64 bytes a few overlapping unaligned loads and stores and no loop,
//! longer ones 32 bytes a step. SSE2 is part of x86_64 itself, so no CPU
//! check is needed.
//!
//! Loops are in `asm!` on purpose: a plain Rust copy loop may be turned
//! back into a call to `memcpy` by the optimizer, which here would call
//! itself.
//!
//! Where it can be reached: only from the static binary's exported symbols
//! (src/main.rs, x86_64 musl builds) and this file's tests. It is not part
//! of the library, so no other module can call it.
//!
//! Invariants every function here keeps, given its caller's contract
//! (`src` readable and `dst` writable for `n` bytes, `l`/`r` readable for
//! `n` bytes):
//! - no load or store touches a byte outside `[p, p + n)` of its region:
//!   the short paths load the first and last bytes with overlapping
//!   unaligned accesses sized to fit within `n`, the long paths step 32
//!   bytes at a time only while a whole step fits;
//! - a copy loads every byte a store could overwrite before that store
//!   (short paths: all loads first; long paths: the tail, or head, is saved
//!   first), so overlapping regions copy correctly in `copy_overlapping`;
//! - no allocation, no call into libc (these *are* libc's routines there).

use core::arch::asm;
use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128};

#[inline(always)]
unsafe fn load16(p: *const u8) -> __m128i {
    // SAFETY: every operation below relies only on this function's own
    // contract, which its caller upholds (see the module's invariants).
    unsafe { _mm_loadu_si128(p.cast()) }
}

#[inline(always)]
unsafe fn store16(p: *mut u8, v: __m128i) {
    // SAFETY: every operation below relies only on this function's own
    // contract, which its caller upholds (see the module's invariants).
    unsafe { _mm_storeu_si128(p.cast(), v) }
}

/// Up to 64 bytes. Every load comes before the first store, so the regions
/// may overlap either way.
#[inline(always)]
unsafe fn copy_upto_64(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: every operation below relies only on this function's own
    // contract, which its caller upholds (see the module's invariants).
    unsafe {
        if n >= 32 {
            let a = load16(src);
            let b = load16(src.add(16));
            let c = load16(src.add(n - 32));
            let d = load16(src.add(n - 16));
            store16(dst, a);
            store16(dst.add(16), b);
            store16(dst.add(n - 32), c);
            store16(dst.add(n - 16), d);
        } else if n >= 16 {
            let a = load16(src);
            let b = load16(src.add(n - 16));
            store16(dst, a);
            store16(dst.add(n - 16), b);
        } else if n >= 8 {
            let a = src.cast::<u64>().read_unaligned();
            let b = src.add(n - 8).cast::<u64>().read_unaligned();
            dst.cast::<u64>().write_unaligned(a);
            dst.add(n - 8).cast::<u64>().write_unaligned(b);
        } else if n >= 4 {
            let a = src.cast::<u32>().read_unaligned();
            let b = src.add(n - 4).cast::<u32>().read_unaligned();
            dst.cast::<u32>().write_unaligned(a);
            dst.add(n - 4).cast::<u32>().write_unaligned(b);
        } else if n >= 2 {
            let a = src.cast::<u16>().read_unaligned();
            let b = src.add(n - 2).cast::<u16>().read_unaligned();
            dst.cast::<u16>().write_unaligned(a);
            dst.add(n - 2).cast::<u16>().write_unaligned(b);
        } else if n == 1 {
            *dst = *src;
        }
    }
}

/// More than 64 bytes, front to back: correct when `dst` is below `src` or
/// the regions do not overlap. The last 32 bytes are loaded first, so the
/// loop may run past `n - 32` and the tail still holds the source's bytes.
#[inline(always)]
unsafe fn copy_forward_long(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: every operation below relies only on this function's own
    // contract, which its caller upholds (see the module's invariants).
    unsafe {
        let c = load16(src.add(n - 32));
        let d = load16(src.add(n - 16));
        // SAFETY (caller): n > 64, so every 32-byte step that starts below
        // n - 32 stays inside both regions.
        asm!(
            "2:",
            "movdqu {a}, xmmword ptr [{src} + {i}]",
            "movdqu {b}, xmmword ptr [{src} + {i} + 16]",
            "movdqu xmmword ptr [{dst} + {i}], {a}",
            "movdqu xmmword ptr [{dst} + {i} + 16], {b}",
            "add {i}, 32",
            "cmp {i}, {end}",
            "jb 2b",
            src = in(reg) src,
            dst = in(reg) dst,
            i = inout(reg) 0usize => _,
            end = in(reg) n - 32,
            a = out(xmm_reg) _,
            b = out(xmm_reg) _,
            options(nostack),
        );
        store16(dst.add(n - 32), c);
        store16(dst.add(n - 16), d);
    }
}

/// More than 64 bytes, back to front, for a `dst` above an overlapping
/// `src`. The first 32 bytes are loaded first and stored last.
#[inline(always)]
unsafe fn copy_backward_long(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: every operation below relies only on this function's own
    // contract, which its caller upholds (see the module's invariants).
    unsafe {
        let a0 = load16(src);
        let b0 = load16(src.add(16));
        // Steps end at n, n - 32, …; the loop stops once a step starts at or
        // below 32, and the saved head covers what is left.
        asm!(
            "2:",
            "sub {i}, 32",
            "movdqu {a}, xmmword ptr [{src} + {i}]",
            "movdqu {b}, xmmword ptr [{src} + {i} + 16]",
            "movdqu xmmword ptr [{dst} + {i}], {a}",
            "movdqu xmmword ptr [{dst} + {i} + 16], {b}",
            "cmp {i}, 32",
            "ja 2b",
            src = in(reg) src,
            dst = in(reg) dst,
            i = inout(reg) n => _,
            a = out(xmm_reg) _,
            b = out(xmm_reg) _,
            options(nostack),
        );
        store16(dst, a0);
        store16(dst.add(16), b0);
    }
}

/// `memcpy`.
///
/// # Safety
/// As `memcpy`: `src` readable and `dst` writable for `n` bytes, the two
/// regions do not overlap.
#[inline]
pub unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: every operation below relies only on this function's own
    // contract, which its caller upholds (see the module's invariants).
    unsafe {
        if n <= 64 {
            copy_upto_64(dst, src, n)
        } else {
            copy_forward_long(dst, src, n)
        }
    }
}

/// `memmove`.
///
/// # Safety
/// As `memmove`: `src` readable and `dst` writable for `n` bytes; the
/// regions may overlap.
#[inline]
pub unsafe fn copy_overlapping(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: every operation below relies only on this function's own
    // contract, which its caller upholds (see the module's invariants).
    unsafe {
        if n <= 64 {
            copy_upto_64(dst, src, n)
        } else if (dst as usize).wrapping_sub(src as usize) >= n {
            // dst below src (the difference wraps) or past its end.
            copy_forward_long(dst, src, n)
        } else {
            copy_backward_long(dst, src, n)
        }
    }
}

/// Orders two equal-length big-endian words as their bytes in memory.
#[inline(always)]
fn order(a: u64, b: u64) -> i32 {
    if a == b {
        0
    } else if u64::from_be(a) < u64::from_be(b) {
        -1
    } else {
        1
    }
}

/// `memcmp`: negative, zero or positive as the first differing byte (as
/// unsigned) of `l` is below, equal to or above that of `r`.
///
/// # Safety
/// As `memcmp`: both readable for `n` bytes.
#[inline]
pub unsafe fn compare(l: *const u8, r: *const u8, n: usize) -> i32 {
    // SAFETY: every operation below relies only on this function's own
    // contract, which its caller upholds (see the module's invariants).
    unsafe {
        if n >= 8 {
            let mut i = 0;
            while i + 8 <= n {
                let o = order(
                    l.add(i).cast::<u64>().read_unaligned(),
                    r.add(i).cast::<u64>().read_unaligned(),
                );
                if o != 0 {
                    return o;
                }
                i += 8;
            }
            // The last word overlaps bytes already found equal.
            if i < n {
                return order(
                    l.add(n - 8).cast::<u64>().read_unaligned(),
                    r.add(n - 8).cast::<u64>().read_unaligned(),
                );
            }
            0
        } else if n >= 4 {
            let head = order32(l, r, 0);
            if head != 0 {
                return head;
            }
            order32(l, r, n - 4)
        } else {
            // 0 to 3 bytes.
            for i in 0..n {
                let (a, b) = (*l.add(i), *r.add(i));
                if a != b {
                    return i32::from(a) - i32::from(b);
                }
            }
            0
        }
    }
}

#[inline(always)]
unsafe fn order32(l: *const u8, r: *const u8, at: usize) -> i32 {
    // SAFETY: every operation below relies only on this function's own
    // contract, which its caller upholds (see the module's invariants).
    unsafe {
        let a = u32::from_be(l.add(at).cast::<u32>().read_unaligned());
        let b = u32::from_be(r.add(at).cast::<u32>().read_unaligned());
        match a.cmp(&b) {
            core::cmp::Ordering::Less => -1,
            core::cmp::Ordering::Equal => 0,
            core::cmp::Ordering::Greater => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes around every branch and step boundary, and a few pages.
    fn sizes() -> Vec<usize> {
        let mut s: Vec<usize> = (0..=200).collect();
        s.extend([255, 256, 257, 1000, 4095, 4096, 4097, 65_537]);
        s
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    #[test]
    fn copy_matches_a_byte_copy_at_every_size_and_alignment() {
        for n in sizes() {
            for (so, d_o) in [(0, 0), (1, 0), (0, 3), (7, 9), (15, 1), (8, 8)] {
                let src = pattern(n + so + 32, 5);
                let mut dst = vec![0xAAu8; n + d_o + 32];
                let expected = {
                    let mut e = dst.clone();
                    e[d_o..d_o + n].copy_from_slice(&src[so..so + n]);
                    e
                };
                // SAFETY: the buffers are live Vecs at least as long as every offset plus n.
                unsafe { copy(dst.as_mut_ptr().add(d_o), src.as_ptr().add(so), n) };
                assert!(dst == expected, "n={n} src+{so} dst+{d_o}");
            }
        }
    }

    #[test]
    fn copy_overlapping_matches_a_buffered_copy_for_every_overlap() {
        for n in sizes().into_iter().filter(|&n| n <= 4097) {
            // Shifts up and down by less than, exactly and more than the
            // length, including the 1-byte shift redb makes.
            for shift in [1usize, 2, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, n / 2 + 1, n, n + 3] {
                for up in [true, false] {
                    let mut buf = pattern(2 * n + shift + 64, 11);
                    let (src_at, dst_at) = if up { (16, 16 + shift) } else { (16 + shift, 16) };
                    let mut expected = buf.clone();
                    let moved = buf[src_at..src_at + n].to_vec();
                    expected[dst_at..dst_at + n].copy_from_slice(&moved);
                    let base = buf.as_mut_ptr();
                    // SAFETY: the buffers are live Vecs at least as long as every offset plus n.
                    unsafe { copy_overlapping(base.add(dst_at), base.add(src_at), n) };
                    assert!(buf == expected, "n={n} shift={shift} up={up}");
                }
            }
        }
    }

    #[test]
    fn compare_orders_as_unsigned_bytes_at_every_position() {
        for n in sizes().into_iter().filter(|&n| n <= 300) {
            let a = pattern(n, 3);
            // SAFETY: the buffers are live Vecs at least as long as every offset plus n.
            assert_eq!(unsafe { compare(a.as_ptr(), a.clone().as_ptr(), n) }, 0, "n={n}");
            for at in 0..n {
                for (x, y) in [(0x00u8, 0xFFu8), (0x7F, 0x80), (0x41, 0x42)] {
                    let (mut l, mut r) = (a.clone(), a.clone());
                    l[at] = x;
                    r[at] = y;
                    // A later difference must not change the verdict.
                    if at + 1 < n {
                        l[n - 1] = 0xFF;
                        r[n - 1] = 0x00;
                    }
                    // SAFETY: the buffers are live Vecs at least as long as every offset plus n.
                    let lr = unsafe { compare(l.as_ptr(), r.as_ptr(), n) };
                    // SAFETY: the buffers are live Vecs at least as long as every offset plus n.
                    let rl = unsafe { compare(r.as_ptr(), l.as_ptr(), n) };
                    assert!(lr < 0 && rl > 0, "n={n} at={at} {x:#x}/{y:#x}: {lr} {rl}");
                    assert_eq!(lr.signum(), l.cmp(&r) as i32, "n={n} at={at}");
                }
            }
        }
    }
}
