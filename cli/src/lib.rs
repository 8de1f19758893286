//! The engine of `wgpu-norm bench`, in the command's package so that the
//! library carries none of it: [`bench`] times every op against the fastest
//! copy the device does. (`check`'s engine is
//! [`wgpu_norm_reference::check`], which the tests use too.)

pub mod bench;
