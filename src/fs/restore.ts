/**
 * `snapctl restore`: brings one file or one directory tree back from a snapshot into the live
 * volume, as new inodes with the snapshot's modes, owners, times, xattrs, symlink targets and
 * hard links (two names of one inode inside the tree stay one inode). Regular files share the
 * snapshot's blocks (one more reference each, written by the next commit): restoring a 1 GiB file
 * adds no data. Runs in one turn of the daemon, so no file operation sees a half-restored tree.
 */
import { isDir, isReg } from './inode.js'
import type { LiveVolume } from './volume.js'
import type { SnapshotView } from './snapshot-view.js'

export interface RestoreResult {
  /** Inodes created, and names linked to one already restored. */
  inodes: number
  links: number
  /** Bytes of file data now shared with the snapshot. */
  bytes: number
}

/** Copies inode `ino` of the snapshot (and its tree) to `name` in the live directory `parent`. */
export function restoreTree (volume: LiveVolume, view: SnapshotView, ino: number, parent: number, name: string): RestoreResult {
  const result: RestoreResult = { inodes: 0, links: 0, bytes: 0 }
  const restored = new Map<number, number>()
  /** Inodes whose times the restore itself changed (directories filled, files linked again). */
  const timed: Array<{ ino: number, source: { atime: number, mtime: number, ctime: number } }> = []
  const pending: Array<{ from: number, parent: number, name: string }> = [{ from: ino, parent, name }]
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    const source = view.inode(next.from)
    const copy = restored.get(next.from)
    if (copy !== undefined && !isDir(source.mode)) {
      volume.link(copy, next.parent, next.name)
      timed.push({ ino: copy, source })
      result.links++
      continue
    }
    const xattrs = new Map<string, Buffer>()
    for (const key of view.listxattr(next.from)) xattrs.set(key, view.getxattr(next.from, key))
    const share = isReg(source.mode) && source.blocks > 0 ? { reader: view.reader, ino: next.from } : null
    const inode = volume.restoreInode(next.parent, next.name, source, xattrs, share)
    restored.set(next.from, inode.ino)
    result.inodes++
    if (share !== null) result.bytes += source.blocks * 512
    if (isDir(source.mode)) {
      timed.push({ ino: inode.ino, source })
      for (const entry of view.readdir(next.from)) pending.push({ from: entry.ino, parent: inode.ino, name: entry.name })
    }
  }
  for (const { ino, source } of timed) volume.restoreTimes(ino, source)
  return result
}
