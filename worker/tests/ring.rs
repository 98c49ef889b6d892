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
    // rank 1 of another generation (another secret) dials rank 0: neither proves the other's
    // secret, rank 0 drops the connection and keeps waiting
    let before = ablate_worker::collective::refused_joins();
    let a2 = addrs.clone();
    let stranger = std::thread::spawn(move || Ring::connect(1, l1, &a2, b"generation 9", Duration::from_millis(800)));
    let e = Ring::connect(0, l0, &addrs, b"generation 7", Duration::from_millis(800)).err().expect("no group with a stranger").to_string();
    assert!(e.contains("rank 1 did not connect within"), "{e}");
    assert!(stranger.join().unwrap().is_err());
    assert!(ablate_worker::collective::refused_joins() >= before + 2, "both listeners dropped the other's connection");
}

/// The gradient exchange over a real ring of 3, with buckets that split the parameters
/// anywhere: each rank's gradients become the mean of the ranks', in place and shape, and a
/// parameter with a gradient on one rank only is averaged with zeros elsewhere.
#[test]
fn bucketed_gradient_exchange_over_the_ring_gives_every_rank_the_mean() {
    use ablate_trainer::collective::exchange_grads_in;
    use ablate_trainer::optim::Param;
    use ablate_trainer::train::StepStats;
    use candle_core::{DType, Device, Tensor, Var};
    let shapes: [&[usize]; 4] = [&[4, 3], &[5], &[2, 3, 2], &[1]];
    for cap in [1, 7, 1 << 20] {
        let out = on_group(3, Duration::from_secs(20), move |ring| {
            let r = ring.rank();
            let zeros = |s: &[usize]| Var::from_tensor(&Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap()).unwrap();
            let params: Vec<Param> = shapes.iter().enumerate().map(|(i, s)| Param { name: format!("p{i}"), var: zeros(s) }).collect();
            // rank r's gradient of p_i is (r + 1) * (i + 1) at every element (integers: exact);
            // p3 gets a gradient on rank 1 only
            let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
            for (i, p) in params.iter().enumerate() {
                if i == 3 && r != 1 {
                    continue;
                }
                loss = (loss + (p.var.as_tensor() * ((r + 1) * (i + 1)) as f64).unwrap().sum_all().unwrap()).unwrap();
            }
            let mut grads = loss.backward().unwrap();
            let mut stats = StepStats { step: 0, loss: r as f64, mse: 0.0, repa: None, grad_norm: 0.0, lr: 0.0 };
            exchange_grads_in(ring, &params, &mut grads, &mut stats, cap).unwrap();
            let g: Vec<(Vec<usize>, Vec<f32>)> = params
                .iter()
                .map(|p| {
                    let g = grads.get(p.var.as_tensor()).expect("every parameter has a gradient on some rank");
                    (g.dims().to_vec(), g.flatten_all().unwrap().to_vec1().unwrap())
                })
                .collect();
            (g, stats.loss)
        });
        for (r, (g, loss)) in out.iter().enumerate() {
            assert_eq!(*loss, 1.0, "mean of the ranks' losses 0, 1, 2");
            for (i, (dims, v)) in g.iter().enumerate() {
                assert_eq!(dims.as_slice(), shapes[i], "cap {cap}, rank {r}, p{i}");
                let want = if i == 3 { 2.0 * 4.0 / 3.0 } else { 2.0 * (i + 1) as f32 };
                assert!(v.iter().all(|&x| x == want), "cap {cap}, rank {r}, p{i}: {v:?} != {want}");
            }
        }
    }
}

/// The initial weights in buckets of any size: every rank of a ring of 3 ends with rank 0's
/// parameters, in their shapes.
#[test]
fn bucketed_parameter_broadcast_gives_every_rank_rank_zeros_weights() {
    use ablate_trainer::collective::broadcast_params_in;
    use ablate_trainer::optim::Param;
    use candle_core::{DType, Device, Tensor, Var};
    let shapes: [&[usize]; 3] = [&[4, 3], &[5], &[2, 3, 2]];
    for cap in [1, 7, 1 << 20] {
        let out = on_group(3, Duration::from_secs(20), move |ring| {
            let r = ring.rank() as f64;
            let params: Vec<Param> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let n: usize = s.iter().product();
                    let t = Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap().affine(1.0, 100.0 * i as f64 + 1000.0 * r).unwrap().reshape(*s).unwrap();
                    Param { name: format!("p{i}"), var: Var::from_tensor(&t.to_dtype(DType::F32).unwrap()).unwrap() }
                })
                .collect();
            broadcast_params_in(ring, &params, cap).unwrap();
            params.iter().map(|p| (p.var.dims().to_vec(), p.var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect::<Vec<_>>()
        });
        for (r, got) in out.iter().enumerate() {
            assert_eq!(got, &out[0], "cap {cap}: rank {r} differs from rank 0");
        }
        for (i, (dims, v)) in out[0].iter().enumerate() {
            assert_eq!(dims.as_slice(), shapes[i]);
            assert!(v.iter().enumerate().all(|(k, &x)| x == k as f32 + 100.0 * i as f32), "cap {cap}: rank 0's own values for p{i}");
        }
    }
}
