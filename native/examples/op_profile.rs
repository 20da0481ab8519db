//! Times single tensor operations of one training step's shapes on flex (forward only, and
//! forward+backward under autodiff), to find which op dominates; then compares equivalent
//! formulations of the slow ones and checks that they agree.
//!
//! cargo run -p tinytune-cli --example op_profile
use burn::tensor::activation::{gelu_approximate, log_softmax, sigmoid, softmax};
use burn::tensor::{Bool, Device, Distribution, Int, Tensor};
use web_time::Instant;

fn time<F: FnMut()>(name: &str, mut f: F) {
    f();
    let n = 5;
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    println!("{name:<40} {:8.2} ms", 1e3 * t.elapsed().as_secs_f64() / n as f64);
}

fn gelu_sigmoid(x: Tensor<3>) -> Tensor<3> {
    // 0.5·(1 + tanh(z)) = sigmoid(2z), so GELU_tanh(x) = x · sigmoid(2·sqrt(2/π)·(x + 0.044715·x³)).
    let c = 2.0 * (2.0 / std::f64::consts::PI).sqrt();
    let inner = x.clone() + x.clone() * x.clone() * x.clone() * 0.044715;
    x * sigmoid(inner * c)
}

fn main() {
    for (label, device) in [("plain", Device::flex()), ("autodiff", Device::flex().autodiff())] {
        println!("== {label}");
        let x = Tensor::<3>::random([16, 128, 128], Distribution::Default, &device).set_require_grad(label == "autodiff");
        let w = Tensor::<2>::random([128, 384], Distribution::Default, &device).set_require_grad(label == "autodiff");
        let g = Tensor::<1>::ones([128], &device).set_require_grad(label == "autodiff");
        let bb = Tensor::<1>::zeros([128], &device).set_require_grad(label == "autodiff");
        let s = Tensor::<4>::random([16, 4, 128, 128], Distribution::Default, &device).set_require_grad(label == "autodiff");
        let q = Tensor::<4>::random([16, 4, 128, 32], Distribution::Default, &device).set_require_grad(label == "autodiff");
        let logits = Tensor::<3>::random([16, 128, 256], Distribution::Default, &device).set_require_grad(label == "autodiff");
        let tg = Tensor::<3, Int>::zeros([16, 128, 1], &device);
        let bw = |t: Tensor<1>| {
            if label == "autodiff" {
                let _ = t.backward();
            } else {
                let _: f32 = t.into_scalar();
            }
        };
        time("linear [16,128,128]x[128,384]", || bw(burn::tensor::module::linear(x.clone(), w.clone(), None).sum()));
        time("matmul reshape [2048,128]x[128,384]", || bw(x.clone().reshape([2048, 128]).matmul(w.clone()).sum()));
        time("layer_norm [16,128,128]", || bw(burn::tensor::module::layer_norm(x.clone(), g.clone(), Some(bb.clone()), 1e-5).sum()));
        time("gelu_approx [16,128,512]", || bw(gelu_approximate(x.clone().repeat_dim(2, 4)).sum()));
        time("softmax [16,4,128,128]", || bw(softmax(s.clone(), 3).sum()));
        time("q.k^T batched [16,4,128,32]", || bw(q.clone().matmul(q.clone().swap_dims(2, 3)).sum()));
        let mask = Tensor::<2, Bool>::tril_mask([128, 128], 0, &device).reshape([1, 1, 128, 128]).expand([16, 4, 128, 128]);
        time("mask_fill [16,4,128,128]", || bw(s.clone().mask_fill(mask.clone(), -1e9).sum()));
        time("tril_mask build+expand", || {
            let m = Tensor::<2, Bool>::tril_mask([128, 128], 0, &device).reshape([1, 1, 128, 128]).expand([16, 4, 128, 128]);
            let _: Tensor<4> = s.clone().mask_fill(m, 0.0);
        });
        time("log_softmax+gather [16,128,256]", || bw(log_softmax(logits.clone(), 2).gather(2, tg.clone()).sum()));
        time("reshape5+narrow+swap (qkv split)", || {
            let y = burn::tensor::module::linear(x.clone(), w.clone(), None).reshape([16, 128, 3, 4, 32]);
            bw(y.narrow(2, 0, 1).reshape([16, 128, 4, 32]).swap_dims(1, 2).sum());
        });
    }

    println!("== equivalent formulations (autodiff)");
    {
        let device = Device::flex().autodiff();
        let x = Tensor::<3>::random([16, 128, 512], Distribution::Normal(0.0, 2.0), &device).require_grad();
        let a: Vec<f32> = gelu_approximate(x.clone()).into_data().try_to_vec::<f32>().unwrap();
        let b: Vec<f32> = gelu_sigmoid(x.clone()).into_data().try_to_vec::<f32>().unwrap();
        let err = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        println!("gelu forms max abs difference: {err:e}");
        time("gelu_approximate (burn)", || {
            let _ = gelu_approximate(x.clone()).sum().backward();
        });
        time("gelu via sigmoid, x*x*x", || {
            let _ = gelu_sigmoid(x.clone()).sum().backward();
        });

        let s = Tensor::<4>::random([16, 4, 128, 128], Distribution::Default, &device).require_grad();
        time("softmax (burn)", || {
            let _ = softmax(s.clone(), 3).sum().backward();
        });
        time("softmax manual exp/sum (max detached)", || {
            let m = s.clone().detach().max_dim(3);
            let e = (s.clone() - m).exp();
            let _ = (e.clone() / e.sum_dim(3)).sum().backward();
        });
        time("log_softmax().exp()", || {
            let _ = burn::tensor::activation::log_softmax(s.clone(), 3).exp().sum().backward();
        });

        let w = Tensor::<2>::random([128, 384], Distribution::Default, &device).require_grad();
        let h = Tensor::<3>::random([16, 128, 128], Distribution::Default, &device).require_grad();
        time("qkv: narrow dim2 of [B,T,3,nh,hs]", || {
            let y = h.clone().reshape([2048, 128]).matmul(w.clone()).reshape([16, 128, 3, 4, 32]);
            let q = y.clone().narrow(2, 0, 1).reshape([16, 128, 4, 32]).swap_dims(1, 2);
            let k = y.clone().narrow(2, 1, 1).reshape([16, 128, 4, 32]).swap_dims(1, 2);
            let _ = q.matmul(k.swap_dims(2, 3)).sum().backward();
        });
        time("qkv: permute to [3,B,nh,T,hs], narrow dim0", || {
            let y = h.clone().reshape([2048, 128]).matmul(w.clone()).reshape([16, 128, 3, 4, 32]).permute([2, 0, 3, 1, 4]);
            let q = y.clone().narrow(0, 0, 1).reshape([16, 4, 128, 32]);
            let k = y.clone().narrow(0, 1, 1).reshape([16, 4, 128, 32]);
            let _ = q.matmul(k.swap_dims(2, 3)).sum().backward();
        });
        time("qkv: split last dim then reshape", || {
            let y = h.clone().reshape([2048, 128]).matmul(w.clone());
            let q = y.clone().narrow(1, 0, 128).reshape([16, 128, 4, 32]).swap_dims(1, 2);
            let k = y.clone().narrow(1, 128, 128).reshape([16, 128, 4, 32]).swap_dims(1, 2);
            let _ = q.matmul(k.swap_dims(2, 3)).sum().backward();
        });
    }
}
