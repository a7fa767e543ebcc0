//! `cargo xtask vm-build`: build (or verify the cached) guest image and say what it is.

use std::time::Instant;

use crate::image;
use crate::image::kernel::Source;
use crate::util::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Kernel provider: debian (the locked package), host, or a PATH (build tree or bzImage)
    #[arg(long, default_value = crate::image::kernel::DEFAULT_KERNEL, value_name = "debian|host|PATH")]
    pub kernel: String,
}

pub fn run(args: Args) -> Result<i32> {
    let t = Instant::now();
    let img = image::build(&Source::parse(&args.kernel))?;
    println!("{}", image::describe(&img));
    println!(
        "  kernel  {} ({} modules, boot modules: {})",
        img.kernel.boot_file().display(),
        img.kernel.manifest.modules.len(),
        img.kernel.manifest.load_at_boot.join(" ")
    );
    println!(
        "  initrd  {} ({:.1} MiB)",
        img.initrd().display(),
        img.manifest.files["initrd.cpio"].size as f64 / 1048576.0
    );
    println!("  base    {}", img.base.display());
    println!("  source  {}", img.manifest.kernel_source);
    println!("  hash    {}", img.hash());
    println!(
        "  verified (sha256): the kernel part, the base archive, initrd.cpio and both manifests"
    );
    eprintln!("vm-build: ready in {:.2} s", t.elapsed().as_secs_f64());
    Ok(0)
}
