//! `memory::keep_freed_memory` in a process of its own, on its main thread (`harness = false`):
//! page faults are counted per process, so no other test may allocate meanwhile, and a training
//! step allocates on the main thread (glibc's main arena).

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    freed_activations_are_reused_without_new_page_faults();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn freed_activations_are_reused_without_new_page_faults() {
    use tch::{Device, Kind, Tensor};
    // Minor page faults of this process so far (field 10 of /proc/self/stat).
    fn minflt() -> u64 {
        let s = std::fs::read_to_string("/proc/self/stat").unwrap();
        let after = &s[s.rfind(')').unwrap() + 2..];
        after.split(' ').nth(7).unwrap().parse().unwrap()
    }
    assert!(reprise_core::memory::keep_freed_memory());
    // A step's activations: `n` tensors of `mib` MiB alive together, then freed; the number of
    // page faults over 20 such rounds after 3 warm-up rounds.
    let faults_per_20_rounds = |n: usize, mib: i64| {
        let step = || {
            let live: Vec<Tensor> = (0..n)
                .map(|_| Tensor::ones([mib << 18], (Kind::Float, Device::Cpu)))
                .collect();
            drop(live);
        };
        for _ in 0..3 {
            step();
        }
        let before = minflt();
        for _ in 0..20 {
            step();
        }
        minflt() - before
    };
    // Four 4 MiB tensors: with glibc's starting thresholds the 16 MiB freed exceed the trim
    // threshold it adapts to (twice the largest freed block), so rounds fault pages in again:
    // about 20 000 faults in 20 rounds without `keep_freed_memory`, none with it.
    let small = faults_per_20_rounds(4, 4);
    assert!(small < 500, "{small} page faults in 20 rounds of 4 x 4 MiB");
    // Two 48 MiB tensors, above the largest mmap threshold glibc takes: mapped afresh and
    // faulted in every round (24 500 faults a round) unless mmap is off.
    let large = faults_per_20_rounds(2, 48);
    assert!(
        large < 2_000,
        "{large} page faults in 20 rounds of 2 x 48 MiB"
    );
    println!(
        "freed activations reused: {small} page faults in 20 rounds of 4 x 4 MiB, \
         {large} in 20 rounds of 2 x 48 MiB"
    );
}
