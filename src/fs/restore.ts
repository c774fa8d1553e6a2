/**
 * `snapctl restore`: brings one file or one directory tree back from a snapshot into the live
 * volume, as new inodes with the snapshot's modes, owners, times, xattrs, symlink targets and
 * hard links (two names of one inode inside the tree stay one inode). Regular files share the
 * snapshot's blocks (one more reference each, written by the next commit): restoring a 1 GiB file
 * adds no data.
 *
 * A tree is restored in steps (`TreeRestore.step`), so the daemon answers file operations between
 * them; fs/snapshots.ts builds it under a temporary name and renames it into place once complete.
 * `removeTreeStep` takes away, in steps too, a tree whose restore did not complete.
 */
import { isDir, isReg } from './inode.js'
import type { TimeNanos } from '../store/records.js'
import type { LiveVolume } from './volume.js'
import type { SnapshotView } from './snapshot-view.js'

export interface RestoreResult {
  /** Inodes created, and names linked to one already restored. */
  inodes: number
  links: number
  /** Bytes of file data now shared with the snapshot. */
  bytes: number
}

/** Counts the names of a snapshot's tree (its root included), `budget` directory entries per step. */
export class TreeCount {
  count = 1
  private readonly view: SnapshotView
  private readonly dirs: number[]

  constructor (view: SnapshotView, ino: number) {
    this.view = view
    this.dirs = isDir(view.inode(ino).mode) ? [ino] : []
  }

  /** Counts up to about `budget` more names; true once the whole tree is counted. */
  step (budget: number): boolean {
    let seen = 0
    while (seen < budget) {
      const dir = this.dirs.pop()
      if (dir === undefined) return true
      for (const entry of this.view.readdir(dir)) {
        this.count++
        seen++
        if (isDir(entry.type)) this.dirs.push(entry.ino)
      }
    }
    return this.dirs.length === 0
  }
}

/** Copies inode `ino` of the snapshot (and its tree) to `name` in the live directory `parent`. */
export class TreeRestore {
  readonly result: RestoreResult = { inodes: 0, links: 0, bytes: 0 }
  private readonly volume: LiveVolume
  private readonly view: SnapshotView
  /** Snapshot inode → its copy: a second name of a file links to the copy. */
  private readonly restored = new Map<number, number>()
  /** Inodes whose times the restore itself changes (directories filled, files linked again, the root renamed). */
  private readonly timed: Array<{ ino: number, source: { atime: number, mtime: number, ctime: number, ns?: TimeNanos } }> = []
  private readonly pending: Array<{ from: number, parent: number, name: string }>

  constructor (volume: LiveVolume, view: SnapshotView, ino: number, parent: number, name: string) {
    this.volume = volume
    this.view = view
    this.pending = [{ from: ino, parent, name }]
  }

  /** Names restored so far. */
  get done (): number {
    return this.result.inodes + this.result.links
  }

  /** Restores up to `budget` more names; true once the tree is complete. */
  step (budget: number): boolean {
    const { volume, view, result } = this
    for (let left = budget; left > 0; left--) {
      const next = this.pending.pop()
      if (next === undefined) return true
      const source = view.inode(next.from)
      const copy = this.restored.get(next.from)
      if (copy !== undefined && !isDir(source.mode)) {
        volume.link(copy, next.parent, next.name)
        this.timed.push({ ino: copy, source })
        result.links++
        continue
      }
      const xattrs = new Map<string, Buffer>()
      for (const key of view.listxattr(next.from)) xattrs.set(key, view.getxattr(next.from, key))
      const share = isReg(source.mode) && source.blocks > 0 ? { reader: view.reader, ino: next.from } : null
      const inode = volume.restoreInode(next.parent, next.name, source, xattrs, share)
      this.restored.set(next.from, inode.ino)
      result.inodes++
      if (share !== null) result.bytes += source.blocks * 512
      // A directory's times change as it is filled, the root's when it is renamed into place.
      if (isDir(source.mode) || this.restored.size === 1) this.timed.push({ ino: inode.ino, source })
      if (isDir(source.mode)) {
        for (const entry of view.readdir(next.from)) this.pending.push({ from: entry.ino, parent: inode.ino, name: entry.name })
      }
    }
    return this.pending.length === 0
  }

  /** Gives the inodes whose times the restore changed the snapshot's times again; call last. */
  restoreTimes (): void {
    for (const { ino, source } of this.timed) this.volume.restoreTimes(ino, source)
  }
}

/** Removes up to `budget` names of the tree at `name` in `parent`, deepest first; true once it is gone. */
export function removeTreeStep (volume: LiveVolume, parent: number, name: string, budget: number): boolean {
  for (let left = budget; left > 0; left--) {
    const top = volume.entries(parent).get(name)
    if (top === undefined) return true
    let dir = parent
    let leaf = name
    let inode = volume.inode(top.ino)
    while (isDir(inode.mode)) {
      const first = volume.entries(inode.ino).keys().next()
      if (first.done === true) break
      dir = inode.ino
      leaf = first.value
      inode = volume.lookup(dir, leaf)
    }
    if (isDir(inode.mode)) volume.rmdir(dir, leaf)
    else volume.unlink(dir, leaf)
  }
  return volume.entries(parent).get(name) === undefined
}
