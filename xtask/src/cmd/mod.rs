pub mod kernel_lock;
pub mod scenario;
pub mod sim;
pub mod vm_build;
pub mod vm_e2e;
pub mod vm_probe;
pub mod vm_reset;
pub mod vm_run;
