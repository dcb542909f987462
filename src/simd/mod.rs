//! The vector abstraction every kernel is written against, its per-ISA backends, and runtime
//! dispatch.
//!
//! A kernel is written once as a [`Kernel`] whose `run::<V>()` is generic over [`F32Vec`].
//! [`dispatch`] instantiates it for the ISA a context chose: the portable backend (`wide`, for the
//! build target), or the AVX2+FMA and AVX-512 backends inside `#[target_feature]` functions, so a
//! library built for baseline x86-64 still runs AVX-512 code where the CPU has it.
//!
//! Adding an ISA means one new backend file here, one arm in [`dispatch`] and one in
//! [`Isa::is_supported`].

#[cfg(test)]
mod conformance;
pub(crate) mod element;
#[cfg(any(test, normkit_emulate_avx512))]
pub(crate) mod emulated;
mod portable;
#[cfg(target_arch = "x86_64")]
#[cfg_attr(normkit_emulate_avx512, allow(dead_code))]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;

use element::ElementIo;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction set the kernels can run on. More may be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// Portable SIMD (`wide`) compiled for the build target: SSE2 on baseline x86-64.
    Portable,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512 F, BW, DQ and VL (and AVX512_BF16's conversion to bf16 where the CPU has it).
    Avx512,
    /// NEON, the aarch64 baseline: the portable kernels, which `wide` builds on NEON there.
    Neon,
}

impl Isa {
    /// Every ISA, in order from least to most capable within its architecture.
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Neon];

    /// Whether the running CPU (and this build) can run this ISA.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The most capable ISA of the running CPU, detected once per process.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            [Isa::Avx512, Isa::Avx2, Isa::Neon]
                .into_iter()
                .find(|isa| isa.is_supported())
                .unwrap_or(Isa::Portable)
        })
    }

    /// Every ISA the running CPU supports.
    pub fn supported() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }
}

/// Whether the running CPU is Intel's (x86-64 vendor string `GenuineIntel`), read once per
/// process: the one tuning that depends on more than the ISA (see
/// `kernels::rownorm::next_row_ahead`) differs between Intel's and AMD's hardware prefetchers.
pub(crate) fn intel_cpu() -> bool {
    static INTEL: OnceLock<bool> = OnceLock::new();
    *INTEL.get_or_init(|| {
        // Miri has no CPUID; the answer only tunes prefetching.
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        {
            // SAFETY: CPUID leaf 0 exists on every x86-64 CPU and only reads identification
            // registers (the function is safe on newer toolchains, hence the allow).
            #[allow(unused_unsafe)]
            let id = unsafe { std::arch::x86_64::__cpuid(0) };
            [id.ebx, id.edx, id.ecx]
                .iter()
                .flat_map(|r| r.to_le_bytes())
                .eq(*b"GenuineIntel")
        }
        #[cfg(any(not(target_arch = "x86_64"), miri))]
        false
    })
}

/// An [`Isa`] that has been checked to run on this CPU. Only this type reaches [`dispatch`], so
/// the `#[target_feature]` code behind it never runs on a CPU without the feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SupportedIsa(Isa);

impl SupportedIsa {
    pub(crate) fn new(isa: Isa) -> Option<Self> {
        isa.is_supported().then_some(SupportedIsa(isa))
    }

    pub(crate) fn best() -> Self {
        SupportedIsa(Isa::best())
    }

    /// The ISA.
    pub(crate) fn isa(self) -> Isa {
        self.0
    }
}

/// A [`SupportedIsa`] that can be replaced while shared: what a context holds, so that a call
/// reads its ISA with one atomic load and no feature detection.
///
/// Soundness: the fields of both types are private to `simd`, and the only writers ([`Self::new`] and
/// [`Self::store`]) take a `SupportedIsa`. So every value [`Self::load`] reads back was a
/// `SupportedIsa` once, whose check passed on this CPU; CPU features do not go away while a
/// process runs, so re-wrapping the value makes no claim that was not already proven.
pub(crate) struct AtomicSupportedIsa(AtomicU8);

impl AtomicSupportedIsa {
    pub(crate) fn new(isa: SupportedIsa) -> Self {
        AtomicSupportedIsa(AtomicU8::new(Self::index(isa.0)))
    }

    /// The index of `isa` in [`Isa::ALL`].
    fn index(isa: Isa) -> u8 {
        Isa::ALL.iter().position(|&i| i == isa).unwrap() as u8
    }

    pub(crate) fn load(&self) -> SupportedIsa {
        // Only indices of SupportedIsa values are ever stored (see the type's comment).
        SupportedIsa(Isa::ALL[usize::from(self.0.load(Ordering::Relaxed))])
    }

    pub(crate) fn store(&self, isa: SupportedIsa) {
        self.0.store(Self::index(isa.0), Ordering::Relaxed)
    }
}

/// The widest vector of any backend, in `f32` lanes.
pub(crate) const MAX_LANES: usize = 16;

/// Bytes of a cache line (every x86-64 and common aarch64 core): the step of prefetches.
pub(crate) const LINE_BYTES: usize = 64;

/// A vector of `f32` lanes. Implemented once per ISA; nothing else in the crate is ISA-specific.
///
/// Every method is `#[inline(always)]` in its backends so that, instantiated inside a
/// `#[target_feature]` function by [`dispatch`], it compiles to that ISA's instructions.
pub trait F32Vec: Copy {
    /// Number of lanes; at most [`MAX_LANES`].
    const LANES: usize;

    fn splat(value: f32) -> Self;
    /// Loads the first `LANES` elements of `src` (panics if shorter).
    fn load(src: &[f32]) -> Self;
    /// Stores into the first `LANES` elements of `dst` (panics if shorter).
    fn store(self, dst: &mut [f32]);
    /// Loads `src.len() < LANES` elements; the remaining lanes hold `fill`.
    fn load_partial(src: &[f32], fill: f32) -> Self;
    /// Stores the first `dst.len() < LANES` lanes.
    fn store_partial(self, dst: &mut [f32]);
    /// Stores into the first `LANES` elements of `dst` with a streaming (non-temporal) store:
    /// written to memory without reading the line into the caches first. `dst` must be aligned
    /// to `LANES * 4` bytes (panics otherwise). Call [`F32Vec::fence_streams`] after the last one.
    fn store_stream(self, dst: &mut [f32]);
    /// Orders earlier streaming stores before any later store (`sfence`); a no-op where
    /// `store_stream` is a plain store.
    fn fence_streams();
    /// Runs `kernel` with this vector type in a function of its own, compiled for this ISA and
    /// never inlined. A kernel with many cases (element types, variants) runs each case apart,
    /// so that the compiler optimizes several functions of ordinary size rather than one that
    /// holds every case (which takes it many times longer to build, for no faster code).
    fn run_apart<K: Kernel>(kernel: K) -> K::Output;
    /// Hints that the cache line holding `addr` will be read soon. Never faults, whatever
    /// `addr` is; a no-op where the backend has no prefetch.
    fn prefetch<T>(addr: *const T);
    fn add(self, rhs: Self) -> Self;
    fn sub(self, rhs: Self) -> Self;
    /// `self * a + b`, fused where the ISA has FMA.
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// `0 > self ? 0 : self`: negative lanes become +0; NaN and -0.0 pass through unchanged.
    fn relu(self) -> Self;

    /// The `u32` vector of the same lane count.
    type U: U32Vec;
    /// The `f64` vector of half the lane count, what [`F32Vec::widen`] gives.
    type D: F64Vec;

    /// The lanes widened to `f64` (exactly): lanes `0 .. LANES / 2`, then the rest.
    fn widen(self) -> (Self::D, Self::D);

    fn mul(self, rhs: Self) -> Self;
    fn div(self, rhs: Self) -> Self;
    /// Correctly rounded square root.
    fn sqrt(self) -> Self;
    /// The bits of each lane.
    fn to_bits(self) -> Self::U;
    /// Lanes made of the given bits.
    fn from_bits(bits: Self::U) -> Self;
    /// Each lane of `v` read as an `i32` and converted (rounded to nearest) to `f32`.
    fn from_i32(v: Self::U) -> Self;

    /// `LANES` 16-bit lanes: how bf16 and f16 data moves between memory and vectors.
    type H: Copy;
    /// Loads the first `LANES` elements of `src` (panics if shorter).
    fn load_h(src: &[u16]) -> Self::H;
    /// Loads `src.len() < LANES` elements; the other lanes are 0.
    fn load_h_partial(src: &[u16]) -> Self::H;
    /// Stores into the first `LANES` elements of `dst` (panics if shorter).
    fn store_h(h: Self::H, dst: &mut [u16]);
    /// Stores the first `dst.len() < LANES` lanes.
    fn store_h_partial(h: Self::H, dst: &mut [u16]);
    /// [`F32Vec::store_h`] with a streaming store; `dst` aligned to `LANES * 2` bytes.
    fn store_h_stream(h: Self::H, dst: &mut [u16]);
    /// The lanes zero-extended to `u32`.
    fn h_to_words(h: Self::H) -> Self::U;
    /// The low 16 bits of each lane.
    fn words_to_h(w: Self::U) -> Self::H;

    /// bf16 lanes widened (exactly).
    #[inline(always)]
    fn from_bf16(h: Self::H) -> Self {
        element::bf16_to_f32(Self::h_to_words(h))
    }
    /// The lanes rounded to bf16, to nearest even.
    #[inline(always)]
    fn to_bf16(self) -> Self::H {
        Self::words_to_h(element::f32_to_bf16(self))
    }
    /// f16 lanes widened (exactly). Backends with conversion instructions override it.
    #[inline(always)]
    fn from_f16(h: Self::H) -> Self {
        element::f16_to_f32(Self::h_to_words(h))
    }
    /// The lanes rounded to f16, to nearest even. Backends with conversion instructions
    /// override it.
    #[inline(always)]
    fn to_f16(self) -> Self::H {
        Self::words_to_h(element::f32_to_f16(self))
    }

    /// The first `LANES` elements of `src`, of any element type, as `f32` lanes.
    #[inline(always)]
    fn read<E: ElementIo>(src: &[E]) -> Self {
        E::load(src)
    }
    /// The `T` vectors at the front of `src` (`T * LANES` elements), one after the other.
    ///
    /// A loop and not `std::array::from_fn`: a closure's body is compiled without the target
    /// features of the kernel that defines it, so the vector instructions in it would stay
    /// calls, one per vector. Kernels pass no closure that touches vectors for that reason.
    #[inline(always)]
    fn read_tile<E: ElementIo, const T: usize>(src: &[E]) -> [Self; T] {
        let mut tile = [Self::splat(0.0); T];
        for (j, v) in tile.iter_mut().enumerate() {
            *v = Self::read(&src[j * Self::LANES..]);
        }
        tile
    }
    /// `src.len() < LANES` elements as `f32` lanes; the others hold `fill`.
    #[inline(always)]
    fn read_partial<E: ElementIo>(src: &[E], fill: f32) -> Self {
        E::load_partial(src, fill)
    }
    /// The lanes rounded to `E` into the first `LANES` elements of `dst`.
    #[inline(always)]
    fn write<E: ElementIo>(self, dst: &mut [E]) {
        E::store(self, dst)
    }
    /// The first `dst.len() < LANES` lanes rounded to `E` into `dst`.
    #[inline(always)]
    fn write_partial<E: ElementIo>(self, dst: &mut [E]) {
        E::store_partial(self, dst)
    }
    /// All of `src` (at most `LANES` elements) as `f32` lanes; the others hold `fill`. Callers
    /// slice exactly the lanes they want (`&s[i..i + lanes]`): one bounds check, and the
    /// whole-vector load needs no other.
    #[inline(always)]
    fn read_lanes<E: ElementIo>(src: &[E], fill: f32) -> Self {
        if src.len() == Self::LANES {
            E::load(src)
        } else {
            E::load_partial(src, fill)
        }
    }
    /// The lanes rounded to `E` into all of `dst` (at most `LANES` elements).
    #[inline(always)]
    fn write_lanes<E: ElementIo>(self, dst: &mut [E]) {
        if dst.len() == Self::LANES {
            E::store(self, dst)
        } else {
            E::store_partial(self, dst)
        }
    }
    /// [`F32Vec::write`] with a streaming store; `dst` aligned to a whole vector of `E`.
    #[inline(always)]
    fn write_stream<E: ElementIo>(self, dst: &mut [E]) {
        E::store_stream(self, dst)
    }
    /// Lane `j` is `if_set[j]` where bit `j` of `bits` is 1, else `if_clear[j]` (bits at and
    /// above `LANES` are ignored). A select: the lanes not chosen never reach the result.
    fn select_bits(bits: u32, if_set: Self, if_clear: Self) -> Self;

    /// Each lane rounded to an integer, to nearest with ties to even, whatever the rounding
    /// mode of the floating-point environment (NaN stays NaN). Backends with a rounding
    /// instruction override this lane-by-lane version.
    #[inline(always)]
    fn round_even(self) -> Self {
        let mut lanes = [0.0f32; MAX_LANES];
        self.store(&mut lanes[..Self::LANES]);
        for v in &mut lanes[..Self::LANES] {
            *v = v.round_ties_even();
        }
        Self::load(&lanes[..Self::LANES])
    }

    /// Stores the first `dst.len() <= LANES` lanes, each an integer in `[-127, 127]` (as
    /// [`F32Vec::round_even`] gives), as `i8`. Backends with packing instructions override this
    /// lane-by-lane version.
    #[inline(always)]
    fn write_i8(self, dst: &mut [i8]) {
        let mut lanes = [0.0f32; MAX_LANES];
        self.store(&mut lanes[..Self::LANES]);
        for (d, &v) in dst.iter_mut().zip(&lanes[..Self::LANES]) {
            *d = v as i8;
        }
    }
}

/// A vector of `f64` lanes, half as many as the [`F32Vec`] it belongs to: where statistics are
/// summed, so that sums of `f32` values and of their products (exact in `f64`) round only as
/// `f64` does.
///
/// Every method is `#[inline(always)]` in its backends, as for [`F32Vec`].
pub trait F64Vec: Copy {
    /// Number of lanes: half the `F32Vec`'s.
    const LANES: usize;

    fn splat(value: f64) -> Self;
    /// Loads the first `LANES` elements of `src` (panics if shorter).
    fn load(src: &[f64]) -> Self;
    /// Stores into the first `LANES` elements of `dst` (panics if shorter).
    fn store(self, dst: &mut [f64]);
    fn add(self, rhs: Self) -> Self;
    fn mul(self, rhs: Self) -> Self;
    /// `self * a + b`, fused where the ISA has FMA.
    fn mul_add(self, a: Self, b: Self) -> Self;
}

/// A vector of `u32` lanes, as many as the [`F32Vec`] it belongs to. Arithmetic wraps.
///
/// Every method is `#[inline(always)]` in its backends, as for [`F32Vec`].
pub trait U32Vec: Copy {
    /// Number of lanes; equal to the `F32Vec`'s.
    const LANES: usize;
    /// Vector registers of the ISA: how many vectors a kernel can keep live without spilling.
    const REGISTERS: usize;

    fn splat(value: u32) -> Self;
    /// `[0, 1, ..., LANES - 1]`.
    fn lane_index() -> Self;
    /// Loads the first `LANES` elements of `src` (panics if shorter).
    fn load(src: &[u32]) -> Self;
    /// Stores into the first `LANES` elements of `dst` (panics if shorter).
    #[allow(dead_code)] // the tests read vectors back with it
    fn store(self, dst: &mut [u32]);
    fn add(self, rhs: Self) -> Self;
    fn sub(self, rhs: Self) -> Self;
    fn and(self, rhs: Self) -> Self;
    fn xor(self, rhs: Self) -> Self;
    /// `self ^ b ^ c` (one instruction on AVX-512; elsewhere `b ^ c` first, so that a `self`
    /// that comes last costs one step of latency).
    fn xor3(self, b: Self, c: Self) -> Self;
    /// Logical shift left by `n < 32` bits.
    fn shl(self, n: u32) -> Self;
    /// Logical shift right by `n < 32` bits.
    fn shr(self, n: u32) -> Self;
    /// The 64-bit products `self[2i] * m` of the even lanes: low half in lane `2i`, high half
    /// in lane `2i + 1` (the odd lanes of `self` are ignored).
    fn mul_even(self, m: u32) -> Self;
    /// Lane `2i + 1` moved to lane `2i`, lane `2i + 1` set to 0 (each 64-bit pair shifted
    /// right by 32 bits).
    fn odd_to_even(self) -> Self;
    /// `[self[0], odd[0], self[2], odd[2], ...]`: the even lanes of `self` and, between them,
    /// the even lanes of `odd`.
    fn even_pairs(self, odd: Self) -> Self;
    /// Bit `j` is set iff `self[j] >= rhs[j]` (unsigned); bits at and above `LANES` are 0.
    fn ge_bits(self, rhs: Self) -> u32;
    /// Interleaves the lanes: `[self[0], rhs[0], self[1], rhs[1], ...]`, first `LANES` lanes
    /// then the next `LANES`.
    fn zip(self, rhs: Self) -> (Self, Self);
    /// Lanes `start .. start + LANES` of the concatenation `[self, next]` (`start < LANES`).
    fn lanes_from(self, next: Self, start: usize) -> Self;
    /// The unsigned maximum of each pair of lanes.
    fn max(self, rhs: Self) -> Self;
}

/// Runs the test function `$check::<V>()` (generic over [`F32Vec`]) with the vector type of
/// every ISA this CPU supports.
#[cfg(test)]
macro_rules! on_every_isa {
    ($check:ident) => {
        for isa in crate::Isa::supported() {
            struct Run;
            impl crate::simd::Kernel for Run {
                type Output = ();
                #[inline(always)]
                fn run<V: crate::simd::F32Vec>(self) {
                    $check::<V>()
                }
            }
            crate::simd::dispatch(crate::simd::SupportedIsa::new(isa).unwrap(), Run);
        }
    };
}
#[cfg(test)]
pub(crate) use on_every_isa;

/// A kernel written once over [`F32Vec`]; `run` must be `#[inline(always)]`.
pub trait Kernel {
    type Output;
    fn run<V: F32Vec>(self) -> Self::Output;
}

/// Runs `kernel` with the vector type of `isa`.
#[inline]
pub(crate) fn dispatch<K: Kernel>(isa: SupportedIsa, kernel: K) -> K::Output {
    match isa.0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a SupportedIsa(Avx512) exists only when the CPU has AVX-512 F/BW/DQ/VL.
        Isa::Avx512 => unsafe { run_avx512(kernel) },
        // Fuzzing option (`RUSTFLAGS="--cfg normkit_emulate_avx512"`, see fuzz/run-ci.sh): 16
        // emulated lanes stand in for AVX2, so that the code paths of AVX-512 (16-lane groups,
        // partial vectors, 64-bit keep words) are fuzzed on CPUs without it.
        #[cfg(all(target_arch = "x86_64", normkit_emulate_avx512))]
        Isa::Avx2 => kernel.run::<emulated::Emulated<16>>(),
        #[cfg(all(target_arch = "x86_64", not(normkit_emulate_avx512)))]
        // SAFETY: a SupportedIsa(Avx2) exists only when the CPU has AVX2, FMA and F16C.
        Isa::Avx2 => unsafe { run_avx2(kernel) },
        _ => kernel.run::<portable::Vector>(),
    }
}

#[cfg(target_arch = "x86_64")]
#[cfg_attr(normkit_emulate_avx512, allow(dead_code))]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2<K: Kernel>(kernel: K) -> K::Output {
    kernel.run::<x86_avx2::Vector>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
unsafe fn run_avx512<K: Kernel>(kernel: K) -> K::Output {
    kernel.run::<x86_avx512::Vector>()
}

/// [`F32Vec::run_apart`] of the AVX2 backend.
#[cfg(target_arch = "x86_64")]
#[cfg_attr(normkit_emulate_avx512, allow(dead_code))]
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn apart_avx2<K: Kernel>(kernel: K) -> K::Output {
    kernel.run::<x86_avx2::Vector>()
}

/// [`F32Vec::run_apart`] of the AVX-512 backend.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
unsafe fn apart_avx512<K: Kernel>(kernel: K) -> K::Output {
    kernel.run::<x86_avx512::Vector>()
}

/// [`F32Vec::run_apart`] of the backends without target features.
#[inline(never)]
fn apart<V: F32Vec, K: Kernel>(kernel: K) -> K::Output {
    kernel.run::<V>()
}
