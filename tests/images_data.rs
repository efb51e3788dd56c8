//! scikit-learn's digits as rnvp reads them (`Images::digits`) against scikit-learn itself.
//! `scripts/setup` exports them to `.rnvp/data/digits.npy`; without that file this test fails.
mod common;
use common::*;
use rnvp::data::images::{self, Images, DIGITS_TEST};

/// The first and the last digit as scikit-learn gives them: 64 levels each, row by row.
fn sklearn_first_and_last() -> (Vec<u16>, Vec<u16>) {
    let script = "from sklearn.datasets import load_digits\n\
                  d = load_digits().images.astype(int)\n\
                  for i in (0, -1):\n    print(' '.join(map(str, d[i].ravel())))\n";
    let out =
        std::process::Command::new(python()).args(["-c", script]).output().expect("cannot start python");
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<u16>> = text
        .lines()
        .map(|l| {
            l.split_whitespace().map(|v| v.parse().unwrap_or_else(|_| panic!("python printed {l}"))).collect()
        })
        .collect();
    assert_eq!(rows.len(), 2, "python printed:\n{text}");
    (rows[0].clone(), rows[1].clone())
}

#[test]
fn digits_are_scikit_learns() {
    let default = repo().join(".rnvp/data/digits.npy");
    if std::env::var_os("RNVP_DIGITS").is_none_or(|p| p.is_empty()) {
        assert!(
            default.exists(),
            "{} does not exist: run scripts/setup (it exports the digits)",
            default.display()
        );
    }
    let d: Images = images::digits(None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((d.n, d.channels, d.height, d.width, d.levels), (1797, 1, 8, 8, 17));
    assert_eq!(d.dim(), 64);
    assert_eq!(d.values.len(), 1797 * 64);
    assert_eq!(d.values.iter().min(), Some(&0));
    assert_eq!(d.values.iter().max(), Some(&16));
    assert!(DIGITS_TEST < d.n);

    let (first, last) = sklearn_first_and_last();
    assert_eq!(d.image(0), &first[..], "first digit");
    assert_eq!(d.image(d.n - 1), &last[..], "last digit");
    let test = d.select(d.n - DIGITS_TEST..d.n);
    assert_eq!((test.n, test.image(DIGITS_TEST - 1)), (DIGITS_TEST, &last[..]));
    let m = d.to_matrix();
    assert_eq!((m.rows, m.cols), (1797, 64));
    assert_eq!(m.row(0), first.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());

    // the levels can be more than the 17 the values use, not fewer
    assert_eq!(images::digits(Some(256)).unwrap().levels, 256);
    assert!(images::digits(Some(16)).is_err());
}
