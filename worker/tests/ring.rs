//! The TCP ring: exact results for every operation and group size, and no hang when a peer
//! dies or stalls.

use ablate_trainer::collective::Collective;
use ablate_worker::collective::{loopback_group, Ring};
use std::time::{Duration, Instant};

/// Runs `f` on every rank of a loopback group of `world`, one thread each.
fn on_group<T: Send + 'static>(world: usize, timeout: Duration, f: impl Fn(&mut Ring) -> T + Send + Sync + Clone + 'static) -> Vec<T> {
    let rings = loopback_group(world, timeout);
    let hs: Vec<_> = rings
        .into_iter()
        .map(|mut r| {
            let f = f.clone();
            std::thread::spawn(move || f(&mut r))
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn all_reduce_sums_exactly_for_any_world_and_length() {
    for world in [1, 2, 3, 4] {
        for len in [0, 1, 3, 7, 1000, 100_003] {
            let out = on_group(world, Duration::from_secs(20), move |r| {
                // integers: the sum is exact whatever the order
                let mut v: Vec<f32> = (0..len).map(|i| ((i * 7 + r.rank() * 13) % 101) as f32).collect();
                r.all_reduce_sum(&mut v).unwrap();
                v
            });
            let want: Vec<f32> = (0..len).map(|i| (0..world).map(|k| ((i * 7 + k * 13) % 101) as f32).sum()).collect();
            for (k, v) in out.iter().enumerate() {
                assert_eq!(v, &want, "world {world}, len {len}, rank {k}");
            }
        }
    }
}

#[test]
fn every_rank_ends_with_identical_bits_for_float_sums() {
    let out = on_group(3, Duration::from_secs(20), |r| {
        let mut v: Vec<f32> = (0..5000).map(|i| ((i as f32 + 0.1) * (r.rank() as f32 + 1.3)).sin() * 1e-3).collect();
        r.all_reduce_sum(&mut v).unwrap();
        v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>()
    });
    assert!(out.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn broadcast_gather_and_barrier() {
    let out = on_group(4, Duration::from_secs(20), |r| {
        let mut v: Vec<f32> = if r.rank() == 2 { (0..3_000_000).map(|i| i as f32).collect() } else { vec![0.0; 3_000_000] };
        r.broadcast(&mut v, 2).unwrap();
        let mut bytes = if r.rank() == 1 { b"checkpoint".to_vec() } else { b"stale".to_vec() };
        r.broadcast_bytes(&mut bytes, 1).unwrap();
        let all = r.all_gather(format!("rank{}", r.rank()).as_bytes()).unwrap();
        r.barrier(Duration::from_secs(5)).unwrap();
        (v[2_999_999], v[17], bytes, all)
    });
    for (last, x, bytes, all) in out {
        assert_eq!((last, x), (2_999_999.0, 17.0));
        assert_eq!(bytes, b"checkpoint");
        assert_eq!(all, vec![b"rank0".to_vec(), b"rank1".to_vec(), b"rank2".to_vec(), b"rank3".to_vec()]);
    }
}

#[test]
fn a_dead_peer_fails_the_survivors_at_once() {
    let rings = loopback_group(3, Duration::from_secs(30));
    let mut it = rings.into_iter();
    let (mut a, mut b, c) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    drop(c); // rank 2 dies (its sockets close, as when the process is killed)
    let t0 = Instant::now();
    let ha = std::thread::spawn(move || a.all_reduce_sum(&mut vec![1.0; 1 << 20]).unwrap_err());
    let hb = std::thread::spawn(move || b.all_reduce_sum(&mut vec![1.0; 1 << 20]).unwrap_err());
    let (ea, eb) = (ha.join().unwrap(), hb.join().unwrap());
    assert!(t0.elapsed() < Duration::from_secs(10), "survivors waited {:?}", t0.elapsed());
    // rank 0 receives from rank 2: it sees the death directly; rank 1 sends to it
    assert!(ea.to_string().contains("rank 2 closed the connection"), "{ea}");
    assert!(eb.to_string().starts_with("all-reduce on rank 1"), "{eb}");
}

#[test]
fn a_stalled_peer_fails_the_others_within_the_deadline() {
    let rings = loopback_group(2, Duration::from_millis(700));
    let mut it = rings.into_iter();
    let (mut a, _stalled) = (it.next().unwrap(), it.next().unwrap());
    let t0 = Instant::now();
    let e = a.all_reduce_sum(&mut [1.0; 16]).unwrap_err();
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(600) && waited < Duration::from_secs(5), "waited {waited:?}");
    assert!(e.to_string().contains("rank 1 did not answer within 700ms"), "{e}");
}

#[test]
fn a_stranger_cannot_join_and_a_missing_peer_times_out() {
    use std::net::TcpListener;
    let l0 = TcpListener::bind("127.0.0.1:0").unwrap();
    let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
    let addrs = vec![l0.local_addr().unwrap().to_string(), l1.local_addr().unwrap().to_string()];
    // rank 1 of another generation (token 9) dials rank 0 (token 7): rank 0 keeps waiting
    let a2 = addrs.clone();
    let stranger = std::thread::spawn(move || Ring::connect(1, l1, &a2, 9, Duration::from_millis(800)));
    let e = Ring::connect(0, l0, &addrs, 7, Duration::from_millis(800)).err().expect("no group with a stranger").to_string();
    assert!(e.contains("rank 1 did not connect within"), "{e}");
    assert!(stranger.join().unwrap().is_err());
}
