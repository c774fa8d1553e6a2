/**
 * The paths the mount shows, and which view answers each: everything is the live volume except
 * `/.snapshots` (a virtual directory listing the snapshots) and `/.snapshots/NAME/...` (the
 * read-only view of snapshot NAME). `.snapshots` is hidden from the root's listing unless asked
 * for (as ZFS hides `.zfs`), so `du`, `find` and backups do not count snapshots twice.
 *
 * Inode numbers: files inside a snapshot keep the numbers they had (as in ZFS). Two directories
 * get numbers of their own, so a walk of the mount never sees a directory that looks like its own
 * ancestor: `.snapshots` itself, and each snapshot's root (the live root is 1).
 */
import { fail } from '../errors.js'
import { ROOT_INO } from '../store/records.js'
import type { LiveVolume } from '../fs/volume.js'
import { SNAPSHOT_DIR, type Snapshots } from '../fs/snapshots.js'
import type { Attr } from '../fs/inode.js'
import { S_IFDIR } from '../fs/inode.js'
import type { DirEntry, ReadView } from '../fs/view.js'
import { SnapshotView } from '../fs/snapshot-view.js'
import type { PathTable } from './paths.js'

const PREFIX = '/' + SNAPSHOT_DIR

/** Inode number of `.snapshots`; snapshot roots count down below it (fuse-native carries 32 bits). */
export const SNAPSHOT_DIR_INO = 0xfffffffe
const SNAPSHOT_ROOTS = 0x00ffffff

/** Where a path leads: the view that answers for it and the inode there. */
export interface Located {
  view: ReadView
  ino: number
  /** Whether changes are allowed (the live volume). */
  writable: boolean
}

export class Namespace {
  private readonly paths: PathTable
  private readonly volume: LiveVolume
  private readonly snapshots: Snapshots
  private readonly listing: SnapshotListing
  /** Whether the root's listing shows `.snapshots`. */
  readonly visible: boolean

  constructor (paths: PathTable, volume: LiveVolume, snapshots: Snapshots, visible: boolean) {
    this.paths = paths
    this.volume = volume
    this.snapshots = snapshots
    this.visible = visible
    this.listing = new SnapshotListing(volume, snapshots)
  }

  /** True for `/.snapshots` and every path under it. */
  static readOnly (path: string): boolean {
    return path.startsWith(PREFIX) && (path.length === PREFIX.length || path[PREFIX.length] === '/')
  }

  locate (path: string): Located {
    if (!Namespace.readOnly(path)) return { view: this.volume, ino: this.paths.resolve(path), writable: true }
    const rest = path.slice(PREFIX.length + 1)
    if (rest.length === 0) return { view: this.listing, ino: SNAPSHOT_DIR_INO, writable: false }
    const slash = rest.indexOf('/')
    const name = slash === -1 ? rest : rest.slice(0, slash)
    const view = this.snapshots.view(name)
    if (view === undefined) fail('ENOENT', `no snapshot ${name}`)
    let ino = ROOT_INO
    if (slash !== -1) {
      for (const part of rest.slice(slash + 1).split('/')) {
        if (part.length > 0) ino = view.lookup(ino, part).ino
      }
    }
    return { view, ino, writable: false }
  }

  /** Fails with EROFS unless `path` is in the live volume. */
  writable (path: string): void {
    if (Namespace.readOnly(path)) fail('EROFS', `${path} is in a read-only snapshot`)
  }

  getattr (at: Located): Attr {
    const attr = at.view.getattr(at.ino)
    if (at.view instanceof SnapshotView && at.ino === ROOT_INO) return { ...attr, ino: rootIno(at.view.record.id) }
    return attr
  }

  readdir (at: Located): DirEntry[] {
    const entries = at.view.readdir(at.ino)
    if (at.writable && at.ino === ROOT_INO && this.visible) entries.push({ name: SNAPSHOT_DIR, ino: SNAPSHOT_DIR_INO, type: S_IFDIR })
    return entries
  }
}

/** `.snapshots` itself: a read-only directory whose entries are the ready snapshots. */
export class SnapshotListing implements ReadView {
  private readonly volume: LiveVolume
  private readonly snapshots: Snapshots

  constructor (volume: LiveVolume, snapshots: Snapshots) {
    this.volume = volume
    this.snapshots = snapshots
  }

  getattr (): Attr {
    const root = this.volume.getattr(ROOT_INO)
    return { ...root, ino: SNAPSHOT_DIR_INO, mode: S_IFDIR | 0o555, nlink: 2 + this.snapshots.ready().length, size: 0, blocks: 0 }
  }

  lookup (_parent: number, name: string): { ino: number } {
    if (this.snapshots.view(name) === undefined) fail('ENOENT', `no snapshot ${name}`)
    return { ino: ROOT_INO }
  }

  readdir (): DirEntry[] {
    return this.snapshots.ready().map(({ name, id }) => ({ name, ino: rootIno(id), type: S_IFDIR }))
  }

  readlink (): string { return fail('EINVAL', SNAPSHOT_DIR) }
  getxattr (_ino: number, name: string): Buffer { return fail('ENODATA', name) }
  listxattr (): string[] { return [] }
  open (): void {}
  close (): void {}
  read (): number { return fail('EISDIR', SNAPSHOT_DIR) }
  readSlices (): number { return fail('EISDIR', SNAPSHOT_DIR) }
}

/** The inode number a snapshot's root shows: its id, counted down from `.snapshots`. */
export function rootIno (id: number): number {
  return SNAPSHOT_DIR_INO - 1 - (id % SNAPSHOT_ROOTS)
}
