//! Where an image flow's training step goes: `profile_image_step ARCH [HIDDEN] [STEPS] [THREADS] [ITERS]`
//! times forward+backward+Adam on one fixed batch of 128 standard-normal 1 × 8 × 8 rows (for perf).
use rnvp::arch::Arch;
use rnvp::multiscale::ImageShape;
use rnvp::train::{Adam, TrainConfig};
use rnvp::{Flow, FlowConfig};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    rnvp::tune_allocator();
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arch: Arch = a.first().map_or("realnvp-image", String::as_str).parse()?;
    let num = |i: usize, d: i64| -> anyhow::Result<i64> {
        Ok(a.get(i).map(|s| s.parse()).transpose()?.unwrap_or(d))
    };
    let (hidden, steps, threads, iters) = (num(1, 64)?, num(2, 4)?, num(3, 1)?, num(4, 20)?);
    anyhow::ensure!(iters > 0 && threads > 0, "ITERS and THREADS must be positive");
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let shape = ImageShape { channels: 1, height: 8, width: 8, scales: 2 };
    let flow = Flow::new(&FlowConfig::image(arch, shape, hidden, steps), Device::Cpu, Kind::Float)?;
    let cfg = TrainConfig { lr: 1e-3, gamma: 1.0, batch_size: 128, ..Default::default() };
    let mut adam = Adam::new(&flow, &cfg, None)?;
    let xs = Tensor::randn([128, 64], (Kind::Float, Device::Cpu));
    let mut times = vec![];
    for i in 0..iters + 3 {
        let t0 = Instant::now();
        adam.zero_grad();
        let loss = flow.stack().loss_backward(&xs, None, false)?;
        adam.step();
        if i >= 3 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        anyhow::ensure!(loss.is_finite(), "loss {loss}");
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{} hidden {hidden} K {steps} threads {threads}: median {:.2} ms/step",
        arch.name(),
        times[times.len() / 2]
    );
    Ok(())
}
