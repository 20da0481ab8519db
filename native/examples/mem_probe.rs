//! Prints measured step memory for a grid of shapes (exploration aid for the estimator).
use burn::tensor::Device;
use tinytune::ModelConfig;
use tinytune::memory::measure::{CountingAlloc, measure_step};
use tinytune::methods::Method;
use tinytune::train::Batch;

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

fn main() {
    let device = Device::flex().autodiff();
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (c, l, h, v, b, t, f) = (args[0], args[1], args[2], args[3], args[4], args[5], args[6]);
    let mut cfg = ModelConfig::new(v, 128.max(t), c, l, h);
    cfg.n_inner = Some(f);
    let batch = Batch { b, t, inputs: vec![1; b * t], targets: vec![2; b * t], weights: vec![1.0; b * t] };
    let r = args.get(7).copied().unwrap_or(0);
    let method = if r == 0 { Method::Full } else { Method::Lora(tinytune::methods::LoraConfig { r, target_modules: vec![std::env::var("T").unwrap_or("c_attn".into())], ..Default::default() }) };
    let m = measure_step(&cfg, &method, &batch, &device).unwrap();
    let k = (b * t * c) as f64 * 4.0;
    println!("ROW {c} {l} {h} {v} {b} {t} {f} {} {} {} {}", m.activations, m.peak, m.params, m.grads);
    println!("c{c} l{l} h{h} v{v} b{b} t{t}: params {} grads {} opt {} act {} ({:.2} BTC4) peak {}", m.params, m.grads, m.optimizer, m.activations, m.activations as f64 / k, m.peak);
    for p in &m.phases { println!("   {:16} peak {:>10} end {:>10}", p.phase, p.peak, p.end); }
    let plan = tinytune::memory::Plan::for_tinytune(&cfg, &method, b as u64, t as u64);
    let e = plan.estimate();
    println!("   overhead {}  est: {:?}", m.overhead, e.gpu);
    for p in &e.phases { println!("   est {:16} {:>10}", p.phase, p.bytes); }
}
