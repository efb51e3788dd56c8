//! `rnvp sample`, `log-prob`, `encode` and `decode`: the flow's passes over points.
use super::{check_points, header, load_flow, read_rows, write_rows};
use crate::cli::{self, non_negative};
use anyhow::Result;
use rnvp::data::{self, Matrix, Scaler};

pub(crate) fn sample(a: cli::SampleArgs) -> Result<()> {
    let n = non_negative("-n", a.n)?;
    let (flow, ck, engine) = load_flow(&a.checkpoint, &a.compute)?;
    check_points(n, flow.stack().config().d as usize)?;
    tch::manual_seed(a.seed as i64);
    let mut xs = data::from_tensor(&flow.stack().run(engine).sample(n as i64)?)?;
    if let Some(s) = &ck.scaler {
        xs = s.inverse(&xs)?;
    }
    if let Some(png) = &a.png {
        let xy: Vec<[f64; 2]> = (0..xs.rows).map(|i| [xs.row(i)[0], xs.row(i)[1]]).collect();
        rnvp::plot::scatter(png, "Samples X = F^-1(Z)", "x₀", "x₁", &[("samples", &xy)])?;
    }
    write_rows(a.out.as_deref(), &xs, &header("x", xs.cols))
}

#[derive(Clone, Copy)]
pub(crate) enum Map {
    LogProb,
    Encode,
    Decode,
}

pub(crate) fn map(a: cli::MapArgs, what: Map) -> Result<()> {
    let (flow, ck, engine) = load_flow(&a.checkpoint, &a.compute)?;
    let d = flow.stack().config().d;
    let m = read_rows(&a.input, d)?;
    let (kind, device) = (flow.stack().kind(), flow.stack().device());
    let (out, head) = match what {
        Map::LogProb | Map::Encode => {
            let xs = match &ck.scaler {
                Some(s) => s.transform(&m)?,
                None => m,
            };
            let t = data::to_tensor(&xs, kind, device)?;
            if let Map::LogProb = what {
                let shift = ck.scaler.as_ref().map_or(0.0, Scaler::log_det);
                let lp = data::from_tensor(&flow.stack().run(engine).log_prob(&t)?.unsqueeze(1))?;
                let lp = Matrix::new(lp.rows, 1, lp.data.iter().map(|v| v + shift).collect())?;
                (lp, vec!["log_prob".to_string()])
            } else {
                (data::from_tensor(&flow.stack().run(engine).encode(&t)?)?, header("z", d as usize))
            }
        }
        Map::Decode => {
            let mut xs =
                data::from_tensor(&flow.stack().run(engine).decode(&data::to_tensor(&m, kind, device)?)?)?;
            if let Some(s) = &ck.scaler {
                xs = s.inverse(&xs)?;
            }
            (xs, header("x", d as usize))
        }
    };
    write_rows(a.out.as_deref(), &out, &head)
}
