//! `BPF_MAP_LOOKUP_BATCH` on an array map: many elements per syscall (Linux 5.6+). aya 0.14 has
//! no batch operations, so this is the one raw `bpf(2)` call of the crate; the attribute layout is
//! the kernel's `union bpf_attr` `batch` member, which is stable UAPI.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{Array, IterableMap as _, MapData},
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's internal "not supported" (`ENOTSUPP`), which can leak to userspace.
const ENOTSUPP: i32 = 524;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

#[derive(Debug)]
pub(super) enum BatchError {
    /// The kernel has no batch lookup for this map: read element by element.
    Unsupported,
    Failed(io::Error),
}

impl From<BatchError> for aya::maps::MapError {
    fn from(e: BatchError) -> Self {
        let io_error = match e {
            BatchError::Unsupported => io::Error::from_raw_os_error(libc::EINVAL),
            BatchError::Failed(e) => e,
        };
        aya::maps::MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_lookup_batch", io_error })
    }
}

/// Calls `f` on elements `0..len` of `array` in index order, `per_call` elements per syscall.
pub(super) fn read_array<V: Pod>(
    array: &Array<MapData, V>,
    len: u32,
    per_call: u32,
    mut f: impl FnMut(&V),
) -> Result<(), BatchError> {
    let fd = array.map().fd().as_fd().as_raw_fd() as u32;
    let per_call = per_call.max(1);
    let mut keys = vec![0u32; per_call as usize];
    let mut values: Vec<V> = Vec::with_capacity(per_call as usize);
    // The first call starts at index 0 (no in_batch); the kernel hands back where the next starts.
    let (mut next, mut first, mut done) = (0u32, true, 0u32);
    while done < len {
        let mut out = 0u32;
        let want = per_call.min(len - done);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const next as u64 },
            out_batch: &raw mut out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: want,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `want` keys and values that outlive the call; the
        // kernel writes at most `count` of each.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        let filled = attr.count.min(want);
        match &err {
            None => {}
            // The end of the map: `filled` elements are still valid.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Some(e) if first && matches!(e.raw_os_error(), Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP)) => {
                return Err(BatchError::Unsupported);
            }
            Some(e) => return Err(BatchError::Failed(io::Error::new(e.kind(), e.to_string()))),
        }
        // SAFETY: the kernel initialised `filled` values (plain old data).
        unsafe { values.set_len(filled as usize) };
        values.iter().take((len - done) as usize).for_each(&mut f);
        values.clear();
        done += filled;
        if err.is_some() || filled == 0 {
            break;
        }
        next = out;
        first = false;
    }
    Ok(())
}
