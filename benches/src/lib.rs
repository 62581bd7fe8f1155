//! Helpers shared by the Postern benches (`benches/crypto.rs`, `benches/tunnel.rs`,
//! `benches/gateway.rs`).
//!
//! * [`procfs`]: CPU time and resident memory read from `/proc` (Linux only, no `unsafe`);
//! * [`children`]: the release binaries as child processes, killed on exit, panic and Ctrl-C;
//! * [`stack`]: the tunnel under test — keys and grants, `postern-relay`, `postern expose`;
//! * [`load`]: routes to the origin, keep-alive HTTP/1.1 load loops and the download;
//! * [`table`]: the printed result table;
//! * [`prom`]: a child's Prometheus metrics, scraped and parsed (sums, histogram quantiles);
//! * [`redis`]: a `redis-server` child on a free loopback port;
//! * [`peers`]: nginx with TLS and an API-key check, rathole's Noise tunnel, and the two
//!   chained — what a user would run instead of Postern.
//!
//! The benches measure; they never decide anything about the code under test.

// A failed setup step or request ends a bench run with a message; there is nothing to recover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod children;
pub mod load;
pub mod peers;
pub mod procfs;
pub mod prom;
pub mod redis;
pub mod stack;
pub mod table;

pub use procfs::{thread_cpu_ns, vm_hwm_bytes, vm_rss_bytes};

/// The `p`-quantile (0..=1) of sorted samples, nearest-rank; 0 when empty.
pub fn quantile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn byte_counts_take_binary_suffixes() {
        std::env::set_var("POSTERN_BENCH_TEST_BYTES", "64MiB");
        assert_eq!(load::env_bytes("POSTERN_BENCH_TEST_BYTES", 1), 64 << 20);
        std::env::set_var("POSTERN_BENCH_TEST_BYTES", "1000");
        assert_eq!(load::env_bytes("POSTERN_BENCH_TEST_BYTES", 1), 1000);
        std::env::set_var("POSTERN_BENCH_TEST_BYTES", "lots");
        assert_eq!(load::env_bytes("POSTERN_BENCH_TEST_BYTES", 7), 7);
    }
}
