/**
 * Mount options for the fuse-native transport, shared by the snapfs daemon and the storage-less
 * benchmark daemon so both are measured under the same kernel settings.
 *
 * fuse-native builds its libfuse option string from a fixed list of fields and has none for
 * `big_writes`, `max_write` or `use_ino`; `FuseWithOptions` replaces that string with ours.
 */
import Fuse from 'fuse-native'

export interface MountOptionSet {
  /** Shown as the source in /proc/mounts, e.g. "snapfs:/var/lib/snapfs/default". */
  fsname: string
  /** Let users other than the mounter in; the kernel still checks modes (default_permissions). */
  allowOther: boolean
}

/** The libfuse 2.9 options snapfs mounts with, each with the reason it is there. */
export function fuseOptionList (set: MountOptionSet): string[] {
  const list = [
    // The kernel checks modes and owners itself, as on a local file system.
    'default_permissions',
    // Without it the high-level API invents inode numbers: hard links would not share st_ino.
    'use_ino',
    // 128 KiB write requests instead of 4 KiB ones: 16x fewer calls for sequential writes.
    'big_writes',
    'max_write=131072',
    'max_read=131072',
    // The path-based API gives every name of a hard-linked file its own kernel inode, so a cached
    // attribute of one name would go stale when the file changes through another: no caching.
    'attr_timeout=0',
    // Shown as fuse.snapfs in /proc/mounts; snapctl finds its mounts by this type.
    'subtype=snapfs',
    'fsname=' + set.fsname.replace(/[,\\]/g, '_')
  ]
  if (set.allowOther) list.push('allow_other')
  return list
}

/** fuse-native with our option string instead of the one it builds from its fixed fields. */
export class FuseWithOptions extends Fuse {
  private readonly optionList: string[]

  constructor (mnt: string, ops: Record<string, (...args: any[]) => void>, optionList: string[], timeoutMs: number) {
    super(mnt, ops, { timeout: timeoutMs })
    this.optionList = optionList
  }

  override _fuseOptions (): string {
    return '-o' + this.optionList.join(',')
  }
}
