//! Criterion micro-benchmarks of the E2EE layer.
//!
//! * `noise_ik/full_handshake` — initiator `write_message` + responder `read_message` +
//!   responder `write_message` + initiator `read_message`: the CPU both sides spend on one
//!   handshake (single thread, nothing else in the loop, so wall time ≈ CPU time).
//! * `noise_ik/responder_only` — `Responder::new` + `read_message` + `write_message` on a
//!   pre-computed first message: what a lease owner spends per dialer session.
//! * `secure_stream/*` — 64 MiB through a `SecureStream` pair over `tokio::io::duplex` in
//!   64 KiB writes (seal + open), on one runtime thread and on two.
//! * `cipher/encrypt_in_place/*` — raw `CipherState::encrypt_in_place` of one record.
//!
//! Run with `cargo bench -p postern-benches --bench crypto` (release; debug builds make the
//! cipher two orders of magnitude slower).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use postern_sdk::noise::{Initiator, Responder, Split, StaticKeypair};
use postern_sdk::record::{SecureStream, MAX_RECORD_PLAINTEXT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROLOGUE: &[u8] = b"postern/1\0bench";
/// Handshake payloads the size of a real `HandshakePayload` (timestamp + one ALPN).
const PAYLOAD: &[u8] = &[0u8; 24];

fn splits() -> (Split, Split) {
    let a = StaticKeypair::generate();
    let b = StaticKeypair::generate();
    let mut i = Initiator::new(&a, b.public(), PROLOGUE);
    let mut r = Responder::new(&b, PROLOGUE);
    r.read_message(&i.write_message(PAYLOAD).unwrap()).unwrap();
    let (m2, rs) = r.write_message(PAYLOAD).unwrap();
    let (_, is) = i.read_message(&m2).unwrap();
    (is, rs)
}

fn handshake(c: &mut Criterion) {
    let initiator = StaticKeypair::generate();
    let responder = StaticKeypair::generate();
    let mut g = c.benchmark_group("noise_ik");
    g.throughput(Throughput::Elements(1));
    g.bench_function("full_handshake", |b| {
        b.iter(|| {
            let mut i = Initiator::new(&initiator, responder.public(), PROLOGUE);
            let mut r = Responder::new(&responder, PROLOGUE);
            let m1 = i.write_message(PAYLOAD).unwrap();
            let hello = r.read_message(&m1).unwrap();
            let (m2, rsplit) = r.write_message(PAYLOAD).unwrap();
            let (payload, isplit) = i.read_message(&m2).unwrap();
            black_box((hello, payload, rsplit, isplit))
        })
    });
    // The responder does not check replays at this layer, so one first message can be answered
    // over and over: exactly the responder's share of the work.
    let m1 = Initiator::new(&initiator, responder.public(), PROLOGUE)
        .write_message(PAYLOAD)
        .unwrap();
    g.bench_function("responder_only", |b| {
        b.iter(|| {
            let mut r = Responder::new(&responder, PROLOGUE);
            let hello = r.read_message(black_box(&m1)).unwrap();
            let (m2, split) = r.write_message(PAYLOAD).unwrap();
            black_box((hello, m2, split))
        })
    });
    g.finish();
}

const STREAM_BYTES: usize = 64 * 1024 * 1024;
const WRITE_SIZE: usize = 64 * 1024;

/// Sends `STREAM_BYTES` through a fresh `SecureStream` pair and reads them all back.
async fn secure_transfer((is, rs): (Split, Split)) -> usize {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let mut tx = SecureStream::new(a, is);
    let mut rx = SecureStream::new(b, rs);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 128 * 1024];
        let mut n = 0usize;
        loop {
            let got = rx.read(&mut buf).await.unwrap();
            if got == 0 {
                break;
            }
            n += got;
        }
        n
    });
    let chunk = vec![0x5au8; WRITE_SIZE];
    for _ in 0..STREAM_BYTES / WRITE_SIZE {
        tx.write_all(&chunk).await.unwrap();
    }
    tx.shutdown().await.unwrap();
    let n = reader.await.unwrap();
    assert_eq!(n, STREAM_BYTES);
    n
}

fn record_layer(c: &mut Criterion) {
    let mut g = c.benchmark_group("secure_stream");
    g.throughput(Throughput::Bytes(STREAM_BYTES as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    let one = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    g.bench_function("duplex_64MiB_in_64KiB_writes/1_thread", |b| {
        b.iter_batched(
            splits,
            |s| one.block_on(secure_transfer(s)),
            BatchSize::PerIteration,
        )
    });
    let two = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    g.bench_function("duplex_64MiB_in_64KiB_writes/2_threads", |b| {
        b.iter_batched(
            splits,
            |s| two.block_on(async { tokio::spawn(secure_transfer(s)).await.unwrap() }),
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("cipher/encrypt_in_place");
    for (name, len) in [
        ("16KiB", 16 * 1024),
        // The largest record plaintext: 64 KiB less the tag, so the record fits a u16 length.
        ("64KiB_max_record", MAX_RECORD_PLAINTEXT),
    ] {
        let (mut split, _) = splits();
        let mut buf = vec![0x5au8; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let tag = split
                    .send
                    .encrypt_in_place(&[], black_box(&mut buf))
                    .unwrap();
                black_box(tag)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, handshake, record_layer);
criterion_main!(benches);
