//! Exists only so that host tooling sees a library target; the programs are the binaries.
#![no_std]
