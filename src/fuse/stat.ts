/**
 * The statfs answer for fuse-native. (Attributes need no conversion: fuse-native packs the
 * core's `Attr` as it is, with st_dev 0.)
 */
import fs from 'node:fs'

/** The statfs fuse-native expects: 32-bit fields, so sizes are reported in `frsize` units. */
export function statfsOf (storeDir: string, filesUsed: number): Record<string, number> {
  const disk = fs.statfsSync(storeDir)
  const frsize = disk.bsize
  const clamp = (n: number): number => Math.min(n, 0xffffffff)
  const files = clamp(Math.max(disk.files, filesUsed + disk.ffree))
  return {
    bsize: 65536,
    frsize,
    blocks: clamp(disk.blocks),
    bfree: clamp(disk.bfree),
    bavail: clamp(disk.bavail),
    files,
    ffree: clamp(Math.max(0, files - filesUsed)),
    favail: clamp(Math.max(0, files - filesUsed)),
    fsid: 0,
    flag: 0,
    namemax: 255
  }
}
