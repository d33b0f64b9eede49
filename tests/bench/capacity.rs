//! `parley-bench capacity`: the measurements behind SCALING.md's capacity
//! model. It starts the distributed topology, runs open-loop traffic at
//! several rates and room sizes while it reads every role's CPU (Postgres
//! and Redis included) over each measured window, fits each role's cores
//! as `per_message * messages/s + per_delivery * deliveries/s` (an idle
//! deployment uses next to nothing), then checks the fit against two sizes
//! it was not fitted on. Memory per connection is read at two numbers of
//! idle connections.

use std::{io::Write as _, time::Duration};

use serde_json::{Value, json};

use crate::{
    FanoutArgs, IdleArgs, fanout,
    suite::{SuiteArgs, Topology, bin_dir, start},
};

/// What the capacity run does.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CapacityArgs {
    #[command(flatten)]
    suite: SuiteArgs,
    /// The measured window of each traffic point.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// The two numbers of idle connections memory is read at.
    #[arg(long, value_delimiter = ',', default_value = "2500,10000")]
    idle: Vec<usize>,
}

/// One traffic point: an aggregate send rate over rooms of one size, one
/// sender per room.
#[derive(Debug, Clone, Copy)]
struct Point {
    rate: f64,
    members: usize,
    rooms: usize,
    /// Fitted on, or only checked against.
    fitted: bool,
}

/// Rates and room sizes that vary messages and deliveries independently
/// over the range two cores carry beside the generator (up to 2,000
/// messages and 30,000 deliveries a second), and two sizes held out to
/// check the fit: a small one and a large one.
const POINTS: [Point; 6] = [
    Point {
        rate: 250.0,
        members: 10,
        rooms: 100,
        fitted: true,
    },
    Point {
        rate: 2000.0,
        members: 10,
        rooms: 100,
        fitted: true,
    },
    Point {
        rate: 250.0,
        members: 40,
        rooms: 50,
        fitted: true,
    },
    Point {
        rate: 750.0,
        members: 40,
        rooms: 50,
        fitted: true,
    },
    Point {
        rate: 500.0,
        members: 20,
        rooms: 75,
        fitted: false,
    },
    Point {
        rate: 1000.0,
        members: 30,
        rooms: 60,
        fitted: false,
    },
];

/// What one point measured: messages and deliveries per second, and each
/// role's cores over the same window.
#[derive(Debug, Clone)]
struct Measured {
    point: Point,
    messages: f64,
    deliveries: f64,
    cores: Vec<(&'static str, f64)>,
}

/// Runs the points and the idle sizes and prints the model.
///
/// # Errors
/// When a topology cannot start or a run fails.
pub(crate) async fn run(args: &CapacityArgs) -> anyhow::Result<()> {
    let bin_dir = bin_dir(&args.suite)?;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.suite.out()?)?;
    let topology: Topology = start("distributed", &args.suite, &bin_dir).await?;
    let mut measured = Vec::new();
    for point in POINTS {
        eprintln!(
            "   {} msg/s, rooms of {} ({} rooms){}",
            point.rate,
            point.members,
            point.rooms,
            if point.fitted { "" } else { ", held out" }
        );
        let fanout_args = FanoutArgs {
            target: topology.target(),
            connections: point.members * point.rooms,
            rooms: point.rooms,
            senders: point.rooms,
            rate: point.rate,
            window: 16,
            warmup: Duration::from_secs(3),
            duration: args.window,
            drain: Duration::from_secs(5),
        };
        let report =
            fanout::run_probed(&fanout_args, "capacity", Some(topology.cpu_probe())).await?;
        anyhow::ensure!(
            report.lost() == 0 && report.duplicates == 0 && report.reordered == 0,
            "the point at {} msg/s lost, repeated or reordered messages: {}",
            point.rate,
            report.json()
        );
        let seconds = report.seconds;
        let m = Measured {
            point,
            messages: report.sent_per_second(),
            deliveries: report.delivered_per_second(),
            cores: report
                .probed
                .iter()
                .map(|(role, cpu)| (*role, cpu / seconds))
                .collect(),
        };
        let mut line: Value = serde_json::from_str(&report.json())?;
        line["fitted"] = point.fitted.into();
        for (role, cores) in &m.cores {
            line["cores_by_role"][*role] = round(*cores, 3).into();
        }
        writeln!(out, "{line}")?;
        measured.push(m);
    }
    topology.stop().await;

    let mut memory = Vec::new();
    for &connections in &args.idle {
        // A fresh start for each size, as the suite's (d) does.
        let topology = start("distributed", &args.suite, &bin_dir).await?;
        eprintln!("   {connections} idle connections");
        let report = crate::idle::run(&IdleArgs {
            target: topology.target(),
            connections,
            rooms: connections / 10,
            hold: Duration::from_secs(5),
            pids: topology.pids(),
        })
        .await?;
        let mut by_role: Vec<(&'static str, f64)> = Vec::new();
        for ((_, role, _), grown) in topology.processes().iter().zip(&report.grown_kib) {
            let kib = *grown as f64 / connections as f64;
            match by_role.iter_mut().find(|(r, _)| r == role) {
                Some((_, total)) => *total += kib,
                None => by_role.push((role, kib)),
            }
        }
        topology.stop().await;
        memory.push((connections, by_role));
    }

    let model = fit(&measured);
    let summary = summary(&measured, &model, &memory);
    writeln!(out, "{summary}")?;
    println!("{summary}");
    print_tables(&measured, &model, &memory);
    Ok(())
}

/// One role's fitted cost: CPU microseconds per message sent and per
/// delivery.
#[derive(Debug, Clone, Copy)]
struct Cost {
    role: &'static str,
    per_message_us: f64,
    per_delivery_us: f64,
}

impl Cost {
    fn cores(&self, messages: f64, deliveries: f64) -> f64 {
        (self.per_message_us * messages + self.per_delivery_us * deliveries) / 1e6
    }
}

/// Least squares per role over the fitted points.
fn fit(measured: &[Measured]) -> Vec<Cost> {
    let fitted: Vec<&Measured> = measured.iter().filter(|m| m.point.fitted).collect();
    let Some(first) = fitted.first() else {
        return Vec::new();
    };
    first
        .cores
        .iter()
        .map(|(role, _)| {
            let rows: Vec<([f64; 2], f64)> = fitted
                .iter()
                .map(|m| {
                    let y = m.cores.iter().find(|(r, _)| r == role).map_or(0.0, |c| c.1);
                    ([m.messages / 1e6, m.deliveries / 1e6], y)
                })
                .collect();
            let [per_message, per_delivery] = least_squares(&rows);
            Cost {
                role,
                per_message_us: per_message,
                per_delivery_us: per_delivery,
            }
        })
        .collect()
}

/// Solves the normal equations `XᵀX b = Xᵀy` by Gaussian elimination with
/// partial pivoting; a singular system gives zeros.
fn least_squares<const N: usize>(rows: &[([f64; N], f64)]) -> [f64; N] {
    // The augmented matrix [XᵀX | Xᵀy], one row per unknown.
    let mut a: Vec<Vec<f64>> = (0..N)
        .map(|i| {
            let mut row: Vec<f64> = (0..N)
                .map(|j| rows.iter().map(|(x, _)| x[i] * x[j]).sum())
                .collect();
            row.push(rows.iter().map(|(x, y)| x[i] * y).sum());
            row
        })
        .collect();
    for col in 0..N {
        let pivot = (col..N)
            .max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        let pivot_row = a[col].clone();
        if pivot_row[col].abs() < 1e-12 {
            return [0.0; N];
        }
        for (index, row) in a.iter_mut().enumerate() {
            if index != col {
                let factor = row[col] / pivot_row[col];
                for (value, above) in row.iter_mut().zip(&pivot_row) {
                    *value -= factor * above;
                }
            }
        }
    }
    std::array::from_fn(|i| a[i][N] / a[i][i])
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

fn summary(
    measured: &[Measured],
    model: &[Cost],
    memory: &[(usize, Vec<(&'static str, f64)>)],
) -> Value {
    let checks: Vec<Value> = measured
        .iter()
        .filter(|m| !m.point.fitted)
        .map(|m| {
            let roles: Vec<Value> = model
                .iter()
                .map(|cost| {
                    let actual = m
                        .cores
                        .iter()
                        .find(|(r, _)| *r == cost.role)
                        .map_or(0.0, |c| c.1);
                    json!({
                        "role": cost.role,
                        "predicted_cores": round(cost.cores(m.messages, m.deliveries), 3),
                        "measured_cores": round(actual, 3),
                    })
                })
                .collect();
            json!({
                "messages_per_s": m.messages.round(),
                "deliveries_per_s": m.deliveries.round(),
                "roles": roles,
            })
        })
        .collect();
    json!({
        "scenario": "capacity",
        "model": model.iter().map(|c| json!({
            "role": c.role,
            "per_message_us": round(c.per_message_us, 1),
            "per_delivery_us": round(c.per_delivery_us, 2),
        })).collect::<Vec<_>>(),
        "checks": checks,
        "kib_per_connection": memory.iter().map(|(n, roles)| json!({
            "connections": n,
            "by_role": roles.iter().map(|(r, k)| json!({"role": r, "kib": round(*k, 2)})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The model and its checks as Markdown tables, as SCALING.md shows them.
fn print_tables(
    measured: &[Measured],
    model: &[Cost],
    memory: &[(usize, Vec<(&'static str, f64)>)],
) {
    println!("\n| role | µs per message | µs per delivery |");
    println!("|---|---|---|");
    for c in model {
        println!(
            "| {} | {:.1} | {:.2} |",
            c.role, c.per_message_us, c.per_delivery_us
        );
    }
    for m in measured {
        println!(
            "\n{} msg/s to rooms of {} ({:.0} msg/s, {:.0} deliveries/s measured){}",
            m.point.rate,
            m.point.members,
            m.messages,
            m.deliveries,
            if m.point.fitted { "" } else { ", held out" }
        );
        println!("| role | predicted cores | measured cores |");
        println!("|---|---|---|");
        let mut total = (0.0, 0.0);
        for c in model {
            let actual = m
                .cores
                .iter()
                .find(|(r, _)| *r == c.role)
                .map_or(0.0, |x| x.1);
            let predicted = c.cores(m.messages, m.deliveries);
            total = (total.0 + predicted, total.1 + actual);
            println!("| {} | {predicted:.3} | {actual:.3} |", c.role);
        }
        println!("| all | {:.3} | {:.3} |", total.0, total.1);
    }
    for (connections, roles) in memory {
        let all: f64 = roles.iter().map(|(_, k)| k).sum();
        let split: Vec<String> = roles.iter().map(|(r, k)| format!("{r} {k:.2}")).collect();
        println!(
            "\n{connections} idle connections: {all:.2} KiB each ({})",
            split.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_recovers_an_exact_plane() {
        let truth = [0.05, 20.0, 3.0];
        let rows: Vec<([f64; 3], f64)> = [(1.0, 10.0), (4.0, 10.0), (1.0, 40.0), (2.0, 40.0)]
            .iter()
            .map(|&(m, d)| {
                let x = [1.0, m, d];
                (x, truth[0] + truth[1] * m + truth[2] * d)
            })
            .collect();
        let fitted = least_squares(&rows);
        for (f, t) in fitted.iter().zip(truth) {
            assert!((f - t).abs() < 1e-9, "{fitted:?} against {truth:?}");
        }
    }

    #[test]
    fn a_singular_system_gives_zeros() {
        let rows = vec![([1.0, 1.0, 1.0], 2.0), ([2.0, 2.0, 2.0], 4.0)];
        assert_eq!(least_squares(&rows), [0.0; 3]);
    }
}
