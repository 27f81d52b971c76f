# Appliance image targets; included by the top-level Makefile, which
# provides `build` (the static release binary below).
DUET_STATIC ?= target/x86_64-unknown-linux-gnu/release/duet
IMAGE_OUT ?= image/out

.PHONY: image vm-test image-clean

# Kernel + initramfs for direct boot and a raw BIOS/UEFI disk image, in
# $(IMAGE_OUT). Downloads (apt-get download) are cached there.
image: build
	OUT=$(abspath $(IMAGE_OUT)) bash image/build.sh $(DUET_STATIC)

# Two appliance VMs under QEMU on a bridge in a private network namespace,
# with a client namespace: election, VIP, failover, persistence of /data.
vm-test: image
	OUT=$(abspath $(IMAGE_OUT)) bash image/vm-test.sh

image-clean:
	rm -rf $(IMAGE_OUT)/vmlinux $(IMAGE_OUT)/vmlinuz $(IMAGE_OUT)/initramfs.img \
	    $(IMAGE_OUT)/disk.img $(IMAGE_OUT)/cmdline $(IMAGE_OUT)/upgrade.tar $(IMAGE_OUT)/vm-test
