//! `tandem-ffi`: the only crate in Tandem that contains `unsafe` code.
//!
//! Everything here exposes a *safe* API; every `unsafe` block carries a `SAFETY:` comment
//! explaining why the operation is sound. The pieces:
//!
//! - [`AlignedBuf`]: heap buffers with a chosen alignment (for `O_DIRECT`).
//! - [`Uring`]: an io_uring wrapper that owns each I/O buffer while the kernel may touch it.
//! - [`SharedRing`]: one [`Uring`] per reactor shared by its devices and sockets
//!   ([`RingOwner`]s), so one `io_uring_enter` per pass submits all their work.
//! - [`EventFd`] and [`WakeSet`]: wake-up primitives for reactors that sleep in epoll;
//!   [`poll_fds`]: `poll(2)` over (fd, want_write) pairs for loops without a reactor.
//! - File helpers: [`open_direct`], [`allocate_thick`], [`punch_hole`], [`logical_block_size`].
//! - Threads: [`pin_current_thread`], [`set_thread_name`].
//! - [`Tap`]: a non-blocking TAP interface for the userspace TCP stack.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
// `is_multiple_of` needs Rust 1.87; the workspace MSRV is 1.80.
#![allow(unknown_lints, clippy::manual_is_multiple_of)]

pub mod alloc_count;
mod buf;
mod event;
mod file;
mod poll;
mod shared_ring;
mod tap;
mod thread;
mod uring;

pub use buf::AlignedBuf;
pub use event::{wait_readable, EventFd, WakeSet};
pub use file::{
    allocate_thick, device_size, dio_alignment, logical_block_size, open_direct, punch_hole,
    DioAlignment, DirectFile,
};
pub use poll::poll_fds;
pub use shared_ring::{RingOwner, SharedRing};
pub use tap::Tap;
pub use thread::{default_sigpipe, pin_current_thread, set_thread_name};
pub use uring::{Uring, UringCompletion};
