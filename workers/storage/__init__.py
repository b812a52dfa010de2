"""The image store and container filesystems: images, archives (docker save, OCI),
safe tar extraction, overlay rootfs."""
