//! The safe Rust API: one module per operation family. Each operation validates everything
//! before it writes anything, splits the work into parts fixed by the shape alone, and runs the
//! kernels on them.

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

/// Whether an output of `elements` elements of type `E`, in contiguous runs of `run` elements
/// (`usize::MAX` if all contiguous), is written with streaming stores.
///
/// Streaming sends each line straight to memory without reading it first: a gain when the
/// output would not stay in the last-level cache anyway, a loss when it would (the next reader,
/// often the next layer, then finds it in memory, and a store that hits a cached line costs
/// less than a streamed one). So outputs stream when they take at least half the last-level
/// cache, whatever their element type, and their runs are at least [`STREAM_MIN_RUN`] long.
pub(crate) fn streams<E>(elements: usize, run: usize) -> bool {
    streams_bytes(elements.saturating_mul(std::mem::size_of::<E>()), run)
}

/// [`streams`] for an output of `bytes` bytes (of an element type known at run time).
pub(crate) fn streams_bytes(bytes: usize, run: usize) -> bool {
    // Below any last-level cache's half there is nothing to look up.
    run >= STREAM_MIN_RUN && bytes >= STREAM_MIN_BYTES_FLOOR && bytes >= stream_min_bytes()
}

/// Shorter runs are not streamed: the partial vectors at both ends of every run share cache
/// lines with streamed stores, which costs more than streaming saves.
const STREAM_MIN_RUN: usize = 1024;

/// No output below this streams, whatever cache size is read (a last-level cache of 2 MiB).
const STREAM_MIN_BYTES_FLOOR: usize = 1 << 20;

/// The last-level cache assumed where it cannot be read (a large server part's).
const DEFAULT_LAST_LEVEL_CACHE: usize = 32 << 20;

/// Half the last-level cache, in bytes (see [`streams`]); read once.
fn stream_min_bytes() -> usize {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MIN.get_or_init(|| last_level_cache_bytes().unwrap_or(DEFAULT_LAST_LEVEL_CACHE) / 2)
}

/// The size of the largest data or unified cache of CPU 0, from Linux's sysfs (not read under
/// Miri, whose isolation rejects file access).
fn last_level_cache_bytes() -> Option<usize> {
    if cfg!(miri) {
        return None;
    }
    let mut best = None;
    for index in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{index}");
        let Ok(kind) = std::fs::read_to_string(format!("{dir}/type")) else {
            break;
        };
        if kind.trim() == "Instruction" {
            continue;
        }
        let Some(bytes) = std::fs::read_to_string(format!("{dir}/size"))
            .ok()
            .and_then(|s| parse_cache_size(s.trim()))
        else {
            continue;
        };
        best = best.max(Some(bytes));
    }
    best
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

    #[test]
    fn cache_sizes_parse() {
        assert_eq!(parse_cache_size("32768K"), Some(32 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("K"), None);
        assert_eq!(parse_cache_size("12X"), None);
    }
}
