/**
 * The changes a volume has made in memory and not yet handed to a commit. The live volume records
 * here what it changed; the writer (commit.ts) takes the whole set at the start of a transaction
 * and applies it. On a failed commit the taken set is merged back under newer changes, so nothing
 * acknowledged is lost.
 */
import type { DirentRecord } from '../store/records.js'
import type { SnapshotReader } from '../store/snapshot-reader.js'

export type DirentChange = Omit<DirentRecord, 'b'> | null

/** A file restored from a snapshot: its blocks are those of `ino` as `reader` sees them. */
export interface Share { reader: SnapshotReader, ino: number }

export class ChangeSet {
  /** Inodes whose record must be written. */
  readonly inodes = new Set<number>()
  /**
   * Inodes whose only change is the access time of a read: written by the next commit like
   * `inodes`, but a close does not wait for a commit for them.
   */
  readonly accessed = new Set<number>()
  /** Inodes to delete with their blocks and xattrs (last link gone, last handle closed). */
  readonly removed = new Set<number>()
  /** Per directory: name → new entry, or null for a removed entry. */
  readonly dirents = new Map<number, Map<string, DirentChange>>()
  /** Per inode: xattr name → value, or null for a removed attribute. */
  readonly xattrs = new Map<number, Map<string, Buffer | null>>()
  /** Per inode: the first block index a truncate made a hole from. */
  readonly truncations = new Map<number, number>()
  /** Per new inode: the snapshot file whose blocks it shares (applied before truncations and pages). */
  readonly shares = new Map<number, Share>()
  /** Per inode: true when it became an orphan (unlinked while open), false when no longer one. */
  readonly orphans = new Map<number, boolean>()
  /** Whether the volume record (its inode reservation) must be saved. */
  volume = false
  /** When the oldest change in this set was made (ms), 0 when empty. */
  since = 0

  get empty (): boolean {
    return this.since === 0
  }

  touch (now: number): void {
    if (this.since === 0) this.since = now
  }

  setDirent (parent: number, name: string, change: DirentChange, now: number): void {
    let names = this.dirents.get(parent)
    if (names === undefined) {
      names = new Map()
      this.dirents.set(parent, names)
    }
    names.set(name, change)
    this.touch(now)
  }

  setXattr (ino: number, name: string, value: Buffer | null, now: number): void {
    let names = this.xattrs.get(ino)
    if (names === undefined) {
      names = new Map()
      this.xattrs.set(ino, names)
    }
    names.set(name, value)
    this.touch(now)
  }

  truncate (ino: number, fromIndex: number, now: number): void {
    const before = this.truncations.get(ino)
    if (before === undefined || fromIndex < before) this.truncations.set(ino, fromIndex)
    this.touch(now)
  }

  /** Puts back the changes of a failed commit (`older`) wherever this newer set has none. */
  mergeOlder (older: ChangeSet): void {
    for (const ino of older.inodes) this.inodes.add(ino)
    for (const ino of older.accessed) this.accessed.add(ino)
    for (const ino of older.removed) this.removed.add(ino)
    for (const [parent, names] of older.dirents) {
      for (const [name, change] of names) {
        if (this.dirents.get(parent)?.has(name) !== true) this.setDirent(parent, name, change, older.since)
      }
    }
    for (const [ino, names] of older.xattrs) {
      for (const [name, value] of names) {
        if (this.xattrs.get(ino)?.has(name) !== true) this.setXattr(ino, name, value, older.since)
      }
    }
    for (const [ino, from] of older.truncations) this.truncate(ino, from, older.since)
    for (const [ino, share] of older.shares) if (!this.shares.has(ino)) this.shares.set(ino, share)
    for (const [ino, orphan] of older.orphans) if (!this.orphans.has(ino)) this.orphans.set(ino, orphan)
    if (older.volume) this.volume = true
    if (!older.empty && (this.since === 0 || older.since < this.since)) this.since = older.since
  }
}
