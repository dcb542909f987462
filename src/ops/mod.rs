//! The safe Rust API: one module per operation family. Each operation validates everything
//! before it writes anything, splits the work into parts fixed by the shape alone, and runs the
//! kernels on them.

use crate::context::Context;
use crate::io::InOut;
use crate::simd::element::Element;

pub mod batchnorm;
pub mod dropout;
pub mod groupnorm;
pub mod instancenorm;
pub mod layernorm;
pub mod rmsnorm;

/// Approximate elements per parallel task of the element-wise and row-wise passes of every
/// operation (a part small enough to balance two to a few dozen threads, large enough that a
/// task's overhead is noise).
pub(crate) const TASK_ELEMENTS: usize = 1 << 15;

/// Whole rows of `row_len` elements in parallel tasks of about [`TASK_ELEMENTS`] elements (at
/// least one row each): the split of every element-wise pass over rows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowParts {
    row_len: usize,
    rows: usize,
    per_task: usize,
}

impl RowParts {
    /// The rows of `elements` elements (a multiple of `row_len`, which is not 0).
    pub(crate) fn new(elements: usize, row_len: usize) -> Self {
        RowParts {
            row_len,
            rows: elements / row_len,
            per_task: (TASK_ELEMENTS / row_len).max(1),
        }
    }

    pub(crate) fn tasks(&self) -> usize {
        self.rows.div_ceil(self.per_task)
    }

    /// The rows of task `k`.
    pub(crate) fn rows(&self, k: usize) -> std::ops::Range<usize> {
        k * self.per_task..self.rows.min((k + 1) * self.per_task)
    }

    /// The elements of `rows`.
    pub(crate) fn span(&self, rows: &std::ops::Range<usize>) -> std::ops::Range<usize> {
        rows.start * self.row_len..rows.end * self.row_len
    }
}

/// Whether the output of `io`, written in contiguous runs of `run` elements (`usize::MAX` if
/// all contiguous) by a call on `ctx` that also reads `inputs` other tensors of its size, is
/// written with streaming stores: [`streams`] with the call's distinct tensors (`io` in place
/// is one).
pub(crate) fn streams_io<E: Element>(
    ctx: &Context,
    io: &InOut<'_, E>,
    inputs: usize,
    run: usize,
) -> bool {
    let tensors = inputs
        + if matches!(io, InOut::InPlace(_)) {
            1
        } else {
            2
        };
    streams::<E>(io.len(), tensors, run, ctx.threads())
}

/// [`streams_bytes`] for a call of `tensors` distinct tensors of `elements` elements of type `E`.
pub(crate) fn streams<E>(elements: usize, tensors: usize, run: usize, threads: usize) -> bool {
    let bytes = elements.saturating_mul(std::mem::size_of::<E>());
    streams_bytes(bytes.saturating_mul(tensors), run, threads)
}

/// Whether the outputs of a call whose distinct tensors (an output that replaces an input
/// counted once) take `footprint` bytes together, written in contiguous runs of `run` elements,
/// on `threads` threads, are written with streaming stores.
///
/// Streaming sends each line straight to memory without reading it first: a gain when the
/// output would not stay in the caches anyway, a loss when it would (the next reader, often the
/// next layer or the next call, then finds it in memory, and a store that hits a cached line
/// costs less than a streamed one). So outputs stream when the call's tensors take at least the
/// last-level cache and the L2 of every thread beyond the first (a last-level cache of victims,
/// AMD's, keeps apart what the cores' L2 caches hold; one L2's worth is left as the slack the
/// rest of the process needs). Measured at that boundary (batch norm inference (4096, 1024),
/// 16 MiB in and 16 MiB out, 32 MiB L3, 1 MiB L2 per core, AVX-512, medians of 100 calls): on
/// one thread streaming took 428-433 us against 538-618 us cached; on two, 384-392 us against
/// 257-264 us cached. Runs shorter than [`STREAM_MIN_RUN`] never stream.
pub(crate) fn streams_bytes(footprint: usize, run: usize, threads: usize) -> bool {
    // Below any cache's size there is nothing to look up.
    run >= STREAM_MIN_RUN
        && footprint > STREAM_MIN_BYTES_FLOOR
        && footprint >= cached_bytes(threads.max(1))
}

/// Shorter runs are not streamed: the partial vectors at both ends of every run share cache
/// lines with streamed stores, which costs more than streaming saves.
const STREAM_MIN_RUN: usize = 1024;

/// No call whose tensors take less than this streams, whatever cache sizes are read (a
/// last-level cache of 2 MiB).
const STREAM_MIN_BYTES_FLOOR: usize = 2 << 20;

/// The last-level cache assumed where it cannot be read (a large server part's).
const DEFAULT_LAST_LEVEL_CACHE: usize = 32 << 20;

/// The private L2 cache assumed where it cannot be read.
const DEFAULT_L2_CACHE: usize = 1 << 20;

/// The most last-level cache counted per CPU that shares it. A virtual machine is shown its
/// host's last-level cache but only a few of the CPUs that share it (an Intel Xeon guest of 2
/// CPUs reads 480 MiB), and no processor has more than about 12 MiB of L3 per core. Measured on
/// such a guest (AVX-512, 2 MiB L2 per core), counting 32 MiB rather than 480: batch norm
/// backward NHWC (32, 64, 56, 56) 1 thread 8.2-8.7 to 5.7-6.3 ms, 2 threads 3.17-3.32 to 2.55-2.57
/// ms; training NHWC 1 thread 5.0 to 3.3 ms, 2 threads 1.78 to 1.63 ms; training NCHW 1 thread
/// 3.8 to 3.0 ms; inference of the same shapes at 2 threads lost 4-6% (926-968 to 975-1017 us).
///
/// How much of its host's cache such a guest really keeps was measured on the same guest, each
/// call with and without streaming (medians of 40-300 calls, alternating): layer norm (8192,
/// 768), 50 MB in all, ran 2.2-2.3 ms cached against 2.8 ms streamed on one thread and 1.10-1.14
/// against 1.42-1.44 ms on two; (9216, 768), 57 MB, 2.9-3.0 against 3.3-3.4 ms; (10240, 768), 63
/// MB, even; (2048, 4096), 67 MB, 6.7-7.0 against 3.8 ms; inference (32, 64, 56, 56), 51 MB, 2
/// threads, 0.98-1.03 against 1.03-1.07 ms. So the guest keeps about 56 MiB, 28 per CPU. Batch
/// norm training reads its input twice (statistics, then normalization) and counts it twice
/// (see `batchnorm::streams`): its (32, 64, 56, 56) on one thread lost 20% cached (3.2 to 3.9
/// ms).
const MAX_LAST_LEVEL_CACHE_PER_CPU: usize = 28 << 20;

/// What the caches of `threads` cores (at least one) hold for a call, in bytes: the last-level
/// cache and one L2 per thread beyond the first (see [`streams_bytes`]); the sizes are read
/// once.
fn cached_bytes(threads: usize) -> usize {
    static SIZES: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    let &(llc, l2) = SIZES.get_or_init(|| {
        let sizes = cache_sizes();
        let llc = sizes.iter().map(|c| c.counted()).max();
        let l2 = sizes.iter().find(|c| c.level == 2).map(|c| c.bytes);
        match (llc, l2) {
            // A last-level cache that is the L2 holds nothing beside it.
            (Some(llc), Some(l2)) if l2 < llc => (llc, l2),
            (Some(llc), _) => (llc, 0),
            (None, _) => (DEFAULT_LAST_LEVEL_CACHE, DEFAULT_L2_CACHE),
        }
    });
    llc.saturating_add((threads - 1).saturating_mul(l2))
}

/// A data or unified cache of CPU 0, as Linux's sysfs describes it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Cache {
    level: u32,
    bytes: usize,
    /// How many CPUs share it (`None` where not read).
    cpus: Option<usize>,
}

impl Cache {
    /// The bytes of a last-level cache counted for a call: at most
    /// [`MAX_LAST_LEVEL_CACHE_PER_CPU`] per CPU sharing it.
    fn counted(&self) -> usize {
        match self.cpus {
            Some(n) => self
                .bytes
                .min(n.max(1).saturating_mul(MAX_LAST_LEVEL_CACHE_PER_CPU)),
            None => self.bytes,
        }
    }
}

/// Each data or unified cache of CPU 0, from Linux's sysfs (nothing under Miri, whose isolation
/// rejects file access).
fn cache_sizes() -> Vec<Cache> {
    let mut found = Vec::new();
    if cfg!(miri) {
        return found;
    }
    for index in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{index}");
        let Ok(kind) = std::fs::read_to_string(format!("{dir}/type")) else {
            break;
        };
        if kind.trim() == "Instruction" {
            continue;
        }
        let read = |name: &str| std::fs::read_to_string(format!("{dir}/{name}")).ok();
        let level = read("level").and_then(|s| s.trim().parse().ok());
        let bytes = read("size").and_then(|s| parse_cache_size(s.trim()));
        let cpus = read("shared_cpu_list").and_then(|s| count_cpus(s.trim()));
        if let (Some(level), Some(bytes)) = (level, bytes) {
            found.push(Cache { level, bytes, cpus });
        }
    }
    found
}

/// The number of CPUs in a list such as `"0-3,8,10-11"`.
fn count_cpus(list: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in list.split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
    }
    Some(n)
}

/// `"32768K"`, `"1M"` or `"512"` (bytes) as bytes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = digits.parse().ok()?;
    let scale = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls stream from the caches' size on: more threads hold more, short runs and small
    /// calls never stream.
    #[test]
    fn streaming_starts_where_the_caches_end() {
        for threads in [1, 2, 8] {
            let held = cached_bytes(threads);
            assert!(held >= cached_bytes(1));
            assert!(!streams_bytes(held - 1, usize::MAX, threads));
            assert_eq!(
                streams_bytes(held, usize::MAX, threads),
                held > STREAM_MIN_BYTES_FLOOR
            );
            assert!(!streams_bytes(usize::MAX, STREAM_MIN_RUN - 1, threads));
        }
        assert!(!streams_bytes(STREAM_MIN_BYTES_FLOOR, usize::MAX, 1));
        // An element-wise pass counts its input and its output.
        let held = cached_bytes(2);
        assert!(streams::<f32>(held.div_ceil(8), 2, usize::MAX, 2));
        assert!(!streams::<f32>(held / 8 - 1, 2, usize::MAX, 2));
    }

    #[test]
    fn cache_sizes_parse() {
        assert_eq!(parse_cache_size("32768K"), Some(32 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("K"), None);
        assert_eq!(parse_cache_size("12X"), None);
    }

    #[test]
    fn shared_cpu_lists_count() {
        assert_eq!(count_cpus("0"), Some(1));
        assert_eq!(count_cpus("0-1"), Some(2));
        assert_eq!(count_cpus("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpus("3-1"), None);
        assert_eq!(count_cpus(""), None);
        assert_eq!(count_cpus("a"), None);
    }

    /// A last-level cache counts at most its per-CPU share: a guest of 2 CPUs shown its host's
    /// 480 MiB counts 32 MiB; 32 MiB shared by 2 CPUs, or a cache whose sharing is unknown,
    /// counts whole.
    #[test]
    fn last_level_cache_counts_per_cpu() {
        let cache = |bytes: usize, cpus| Cache {
            level: 3,
            bytes,
            cpus,
        };
        assert_eq!(cache(480 << 20, Some(2)).counted(), 56 << 20);
        assert_eq!(cache(32 << 20, Some(2)).counted(), 32 << 20);
        assert_eq!(cache(480 << 20, None).counted(), 480 << 20);
        assert_eq!(cache(96 << 20, Some(8)).counted(), 96 << 20);
    }
}
