pub mod kernel_lock;
pub mod vm_build;
pub mod vm_probe;
pub mod vm_reset;
pub mod vm_run;
