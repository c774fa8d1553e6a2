/**
 * The kernel's node ids on the native transport, and what each stands for: a live inode (its
 * number is its node id, the root's is 1), `.snapshots` (one fixed id), or an inode of a snapshot
 * (ids handed out on lookup from `VIRTUAL_BASE` up, dropped when the kernel forgets them).
 *
 * Every entry the daemon replies with counts one lookup of its node, and the kernel gives them
 * back with forget: the table keeps the counts, and for each node the names (directory node id,
 * name) the kernel may hold, which is what the invalidations after a rollback or restore name.
 */
import { fail } from '../../errors.js'
import type { SnapshotView } from '../../fs/snapshot-view.js'

/** Live inode numbers stay below this; node ids above it stand for snapshot inodes. */
export const VIRTUAL_BASE = 2 ** 48
/** The node id of `.snapshots`. */
export const SNAPSHOT_DIR_NODE = VIRTUAL_BASE

/** What a snapshot node stands for. */
export interface SnapshotNode { view: SnapshotView, ino: number }

export class NodeTable {
  /** Lookups the kernel holds, by node id. */
  private readonly lookups = new Map<number, number>()
  /** The names the kernel may have cached for each node: "PARENT/NAME". */
  private readonly names = new Map<number, Set<string>>()
  private readonly snapshotNodes = new Map<number, SnapshotNode>()
  private readonly idsOf = new Map<SnapshotView, Map<number, number>>()
  private next = VIRTUAL_BASE + 1

  /** The snapshot inode behind a node id; ESTALE once forgotten. */
  snapshotNode (node: number): SnapshotNode {
    const found = this.snapshotNodes.get(node)
    if (found === undefined) fail('ESTALE', `node ${node}`)
    return found
  }

  /** The node id of a snapshot's inode, handed out on first use. */
  idOf (view: SnapshotView, ino: number): number {
    let ids = this.idsOf.get(view)
    if (ids === undefined) {
      ids = new Map()
      this.idsOf.set(view, ids)
    }
    let node = ids.get(ino)
    if (node === undefined) {
      node = this.next++
      ids.set(ino, node)
      this.snapshotNodes.set(node, { view, ino })
    }
    return node
  }

  /** Counts a lookup of `node` through `name` in directory `parent` (an entry was replied). */
  looked (parent: number, name: string, node: number): void {
    this.lookups.set(node, (this.lookups.get(node) ?? 0) + 1)
    let names = this.names.get(node)
    if (names === undefined) {
      names = new Set()
      this.names.set(node, names)
    }
    names.add(`${parent}/${name}`)
  }

  /** The kernel dropped `count` lookups of `node`. */
  forget (node: number, count: number): void {
    const left = (this.lookups.get(node) ?? 0) - count
    if (left > 0) {
      this.lookups.set(node, left)
      return
    }
    this.lookups.delete(node)
    this.names.delete(node)
    const snapshot = this.snapshotNodes.get(node)
    if (snapshot === undefined) return
    this.snapshotNodes.delete(node)
    this.idsOf.get(snapshot.view)?.delete(snapshot.ino)
  }

  /** Nodes the kernel holds at least one lookup of. */
  get size (): number {
    return this.lookups.size
  }

  /** Lookups the kernel holds on `node` (0 when it holds none). */
  held (node: number): number {
    return this.lookups.get(node) ?? 0
  }

  /** The live nodes the kernel holds, with the names it may have cached for each. */
  * liveNodes (): Iterable<{ node: number, names: Array<{ parent: number, name: string }> }> {
    for (const [node, names] of this.names) {
      if (node >= VIRTUAL_BASE) continue
      const list: Array<{ parent: number, name: string }> = []
      for (const key of names) {
        const slash = key.indexOf('/')
        list.push({ parent: Number(key.slice(0, slash)), name: key.slice(slash + 1) })
      }
      yield { node, names: list }
    }
  }
}
