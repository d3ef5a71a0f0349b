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
    // A step's activations: four 4 MiB tensors alive together, then freed. With glibc's
    // starting thresholds the 16 MiB freed exceed the trim threshold it adapts to (twice the
    // largest freed block), so rounds fault pages in again: about 20 000 faults in 20 rounds
    // without `keep_freed_memory`, none with it (after the warm-up rounds settle the heap).
    let step = || {
        let live: Vec<Tensor> = (0..4)
            .map(|_| Tensor::ones([1 << 20], (Kind::Float, Device::Cpu)))
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
    let faults = minflt() - before;
    assert!(faults < 500, "{faults} page faults in 20 rounds");
    println!("freed activations reused: {faults} page faults in 20 rounds of 16 MiB");
}
