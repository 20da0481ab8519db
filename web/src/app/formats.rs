//! The number-format widget: one number in every format, computed in the page by
//! `tinytune::formats` (pure arithmetic, no worker).

use leptos::prelude::*;
use tinytune::formats::show::{float_format, show};

use crate::widgets::{NumberFormatParams, Widget};

fn params(w: &Widget) -> NumberFormatParams {
    match w {
        Widget::NumberFormat(p) => p.clone(),
        _ => NumberFormatParams::default(),
    }
}

fn num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if (1e-4..1e6).contains(&a) { format!("{v:.10}").trim_end_matches('0').trim_end_matches('.').to_string() } else { format!("{v:.6e}") }
}

/// Bits with sign, exponent and mantissa in their own colours (floats), or one code.
fn bits_view(bits: String) -> impl IntoView {
    let parts: Vec<String> = bits.split(' ').map(String::from).collect();
    if parts.len() == 3 {
        view! {
            <code class="bits">
                <span class="sign" title="sign">{parts[0].clone()}</span>" "
                <span class="exp" title="exponent">{parts[1].clone()}</span>" "
                <span class="man" title="mantissa">{parts[2].clone()}</span>
            </code>
        }
        .into_any()
    } else {
        view! { <code class="bits"><span class="code" title="code">{bits}</span></code> }.into_any()
    }
}

/// Each float format's range on a log2 axis: subnormals, normals, and where the value is.
fn range_chart(x: f32) -> impl IntoView {
    let (lo, hi) = (-150.0f64, 130.0f64);
    let (w, left, row_h) = (560.0, 80.0, 22.0);
    let sx = move |e: f64| left + (e - lo) / (hi - lo) * (w - left - 80.0);
    let names = ["fp32", "tf32", "fp16", "bf16", "fp8-e4m3", "fp8-e5m2"];
    let rows = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let f = float_format(n).expect("a float format");
            let y = i as f64 * row_h + 4.0;
            let (s, m, top) = (f.min_subnormal().log2(), f.min_normal().log2(), f.max_value().log2());
            view! {
                <g>
                    <text x="0" y=format!("{:.1}", y + 12.0) class="label">{*n}</text>
                    <rect x=format!("{:.1}", sx(s)) y=format!("{y:.1}") width=format!("{:.1}", sx(m) - sx(s)) height="14" fill="#56b4e9"><title>{format!("subnormals {:e} … {:e}", f.min_subnormal(), f.min_normal())}</title></rect>
                    <rect x=format!("{:.1}", sx(m)) y=format!("{y:.1}") width=format!("{:.1}", sx(top) - sx(m)) height="14" fill="#0072b2"><title>{format!("normals {:e} … {:e}; epsilon {:e}", f.min_normal(), f.max_value(), f.epsilon())}</title></rect>
                    <text x=format!("{:.1}", w - 72.0) y=format!("{:.1}", y + 12.0) class="label">{format!("ε = 2^-{}", f.mantissa_bits)}</text>
                </g>
            }
        })
        .collect::<Vec<_>>();
    let h = names.len() as f64 * row_h + 30.0;
    let ticks = (-140..=120).step_by(40).map(|e| {
        let x = sx(e as f64);
        view! { <g><line x1=format!("{x:.1}") x2=format!("{x:.1}") y1="0" y2=format!("{:.1}", h - 24.0) stroke="#ddd" /><text x=format!("{x:.1}") y=format!("{:.1}", h - 10.0) class="label" text-anchor="middle">{format!("2^{e}")}</text></g> }
    }).collect::<Vec<_>>();
    let marker = (x.is_finite() && x != 0.0).then(|| {
        let e = (x.abs() as f64).log2().clamp(lo, hi);
        view! { <line x1=format!("{:.1}", sx(e)) x2=format!("{:.1}", sx(e)) y1="0" y2=format!("{:.1}", h - 24.0) stroke="#d55e00" stroke-width="2"><title>{format!("|value| = 2^{e:.2}")}</title></line> }
    });
    view! {
        <svg class="chart bars" viewBox=format!("0 0 {w} {h}") role="img" aria-label="range of each float format">
            {ticks}
            {rows}
            {marker}
        </svg>
        <p class="status">"Light: subnormals (precision fades); dark: normal numbers, each with the same relative precision ε; orange: your number."</p>
    }
}

#[component]
pub fn NumberFormatWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = super::widgets::setter(state, error);
    let p = Memo::new(move |_| params(&state.get()));
    let rows = Memo::new(move |_| {
        let p = p.get();
        let x: f32 = p.value.parse().unwrap_or(f32::NAN);
        (x, show(x, p.range))
    });
    view! {
        <div class="widget number-format" data-widget="number-format">
            <div class="controls">
                {super::widgets::field("number", "value", move || p.get().value, set)}
                {super::widgets::field("block absmax (scaled formats)", "range", move || p.get().range.to_string(), set)}
            </div>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <table data-testid="formats-table">
                <thead><tr><th>"format"</th><th>"bits"</th><th>"stored"</th><th>"error"</th><th>"what happened"</th></tr></thead>
                <tbody>
                    {move || rows.get().1.into_iter().map(|r| view! {
                        <tr data-format=r.format>
                            <td>{r.format}</td>
                            <td>{bits_view(r.bits.clone())}</td>
                            <td class="num" data-testid="stored">{num(r.stored)}</td>
                            <td class="num">{if r.error.is_nan() { "–".to_string() } else { num(r.error) }}</td>
                            <td>{r.note.clone()}</td>
                        </tr>
                    }).collect::<Vec<_>>()}
                </tbody>
            </table>
            {move || range_chart(rows.get().0)}
        </div>
    }
}

impl super::WidgetView for crate::widgets::NumberFormatParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <NumberFormatWidget state=state /> }.into_any()
    }
}
