//! Hostile `membomb`: allocates 1 MiB blocks, writes every byte and keeps them all, forever.
//! When the host's memory limit refuses to grow linear memory, the allocator fails and the
//! standard library aborts, which is a wasm trap: the job must fail with a memory-limit error
//! and the host must stay up. Declares no scopes.

use corral_guest::{Agent, Error, Value};

const BLOCK: usize = 1 << 20;

struct MemBomb;

impl Agent for MemBomb {
    fn handle(_input: Value) -> Result<Value, Error> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Filling the block touches every page, so the memory is really committed.
            let block = core::hint::black_box(vec![0xA5u8; BLOCK]);
            hoard.push(block);
            core::hint::black_box(&hoard);
        }
    }
}

corral_guest::export_agent!(MemBomb, scopes = []);
