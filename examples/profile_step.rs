//! Where a training step's time goes (forward, backward, Adam), for the notebook's 3-layer model.
use rnvp::data::{scaler::standardize, Rng, ToySet};
use rnvp::train::Adam;
use rnvp::{Flow, FlowConfig};
use std::time::Instant;
use tch::{Device, Kind};

fn main() -> anyhow::Result<()> {
    rnvp::tune_allocator();
    let layers: i64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let flow = Flow::new(&FlowConfig::notebook(layers), Device::Cpu, Kind::Float)?;
    let mut adam = Adam::new(&flow, &Default::default(), None)?;
    let batch = standardize(&ToySet::TwoMoons.sample(512, 0.05, &mut Rng::new(0)))?;
    let xs = rnvp::data::to_tensor(&batch, Kind::Float, Device::Cpu)?;
    let (mut t_data, mut t_fwd, mut t_bwd, mut t_adam) = (0.0, 0.0, 0.0, 0.0);
    let n = 300;
    for i in 0..n + 50 {
        let t0 = Instant::now();
        let b = standardize(&ToySet::TwoMoons.sample(512, 0.05, &mut Rng::new(i)))?;
        let _x2 = rnvp::data::to_tensor(&b, Kind::Float, Device::Cpu)?;
        let t1 = Instant::now();
        adam.zero_grad();
        let (_, lp, lj) = flow.stack().forward(&xs)?;
        let loss = -(lp + lj).mean(Kind::Float);
        let _ = loss.double_value(&[]);
        let t2 = Instant::now();
        loss.backward();
        let t3 = Instant::now();
        adam.step();
        let t4 = Instant::now();
        if i >= 50 {
            t_data += (t1 - t0).as_secs_f64();
            t_fwd += (t2 - t1).as_secs_f64();
            t_bwd += (t3 - t2).as_secs_f64();
            t_adam += (t4 - t3).as_secs_f64();
        }
    }
    let ms = |t: f64| t / n as f64 * 1e3;
    println!(
        "layers {layers}: data {:.3} ms, forward {:.3} ms, backward {:.3} ms, adam {:.3} ms, total {:.3} ms",
        ms(t_data),
        ms(t_fwd),
        ms(t_bwd),
        ms(t_adam),
        ms(t_data + t_fwd + t_bwd + t_adam)
    );
    Ok(())
}
