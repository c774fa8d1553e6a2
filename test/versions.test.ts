/**
 * The generation rules of the store, on a real LMDB store through the live volume (no mount):
 * while no snapshot exists every change happens in place; once the latest snapshot's generation
 * is behind the volume's, a change to a record born before it keeps the old version in history,
 * lists it in the dead list under the new generation and keeps its block alive, while a second
 * change in the same generation happens in place again. `snapfs check` accepts every state.
 * (Snapshots themselves come with issue 3; here the generation is advanced by hand.)
 */
import t, { type Test } from 'tap'
import { mkdtemp, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { Store } from '../src/store/store.js'
import { checkStore } from '../src/store/check.js'
import { LiveVolume } from '../src/fs/volume.js'
import { Table, decodeBmap, inodeKey, prefixRange } from '../src/store/keys.js'

const owner = { uid: 0, gid: 0 }
const BLOCK = 64 * 1024

async function fresh (t: Test): Promise<{ store: Store, volume: LiveVolume }> {
  const dir = await mkdtemp('/var/tmp/snapfs-versions-')
  const store = await Store.init(join(dir, 'store'))
  t.teardown(async () => {
    await store.close()
    await rm(dir, { recursive: true, force: true })
  })
  return { store, volume: new LiveVolume(store, store.volume('main'), { cacheBytes: 16 << 20, dirtyAgeMs: 60_000 }) }
}

/** What a snapshot will do: freeze generation g and write in g + 1 from now on. */
function advanceGeneration (volume: LiveVolume): void {
  volume.record.lastSnapGen = volume.record.gen
  volume.record.gen++
  volume.changes.volume = true
  volume.changes.touch(Date.now())
}

const count = (store: Store, db: 'history' | 'deadlist' | 'births'): number => store[db].getKeysCount()
const historyOf = (store: Store, table: Table): Array<{ key: Buffer, value: { d: number, v: Buffer } }> =>
  [...store.history.getRange()].filter(({ key }) => key[0] === table) as Array<{ key: Buffer, value: { d: number, v: Buffer } }>

t.test('without snapshots every change is in place', async t => {
  const { store, volume } = await fresh(t)
  const file = volume.mknod(1, 'a', 0o100644, 0, owner)
  await volume.write(file.ino, 0, Buffer.alloc(3 * BLOCK, 1))
  await volume.flush()
  const blocksBefore = store.blocks.getKeysCount()
  await volume.write(file.ino, BLOCK, Buffer.alloc(BLOCK, 2))
  volume.setattr(file.ino, { size: BLOCK })
  volume.rename(1, 'a', 1, 'b')
  await volume.flush()
  t.equal(count(store, 'history'), 0, 'no history')
  t.equal(count(store, 'deadlist'), 0, 'no dead list')
  t.equal(store.blocks.getKeysCount(), blocksBefore - 2, 'truncated blocks are freed at once')
  t.same(checkStore(store).problems, [])
})

t.test('after a generation is frozen, old versions move to history and keep their blocks', async t => {
  const { store, volume } = await fresh(t)
  const file = volume.mknod(1, 'a', 0o100644, 0, owner)
  volume.mkdir(1, 'd', 0o755, owner)
  await volume.write(file.ino, 0, Buffer.alloc(3 * BLOCK, 1))
  await volume.flush()
  const frozenBlocks = store.blocks.getKeysCount()
  advanceGeneration(volume)

  await volume.write(file.ino, BLOCK, Buffer.alloc(BLOCK, 2))
  volume.setattr(file.ino, { size: BLOCK * 2 })
  volume.rename(1, 'd', 1, 'e')
  await volume.flush()

  const bmapHistory = historyOf(store, Table.Bmap)
  t.equal(bmapHistory.length, 2, 'the overwritten and the truncated block are kept')
  t.ok(bmapHistory.every(({ value }) => value.d === 2), 'both died in generation 2')
  t.ok(bmapHistory.every(({ value }) => decodeBmap(value.v).birth === 1), 'both were born in generation 1')
  t.equal(historyOf(store, Table.Dirent).length, 1, 'the renamed entry is kept')
  t.ok(historyOf(store, Table.Inode).length >= 2, 'the old file and root records are kept')
  t.equal(count(store, 'deadlist'), count(store, 'history'), 'every history version is in the dead list')
  t.equal(store.blocks.getKeysCount(), frozenBlocks + 1, 'no block freed, one new block for the overwrite')
  const buf = Buffer.alloc(BLOCK)
  volume.read(file.ino, BLOCK, BLOCK, buf)
  t.ok(buf.equals(Buffer.alloc(BLOCK, 2)), 'the live file reads the new data')
  t.same(checkStore(store).problems, [], 'check accepts history and shared references')

  const historyBefore = count(store, 'history')
  const birthsBefore = count(store, 'births')
  await volume.write(file.ino, BLOCK, Buffer.alloc(BLOCK, 3))
  await volume.flush()
  t.equal(count(store, 'history'), historyBefore, 'a second overwrite in the same generation is in place')
  t.equal(count(store, 'births'), birthsBefore, 'and adds no birth')
  t.same(checkStore(store).problems, [])

  volume.unlink(1, 'a')
  await volume.flush()
  const fileKeys = [...store.bmap.getKeys(prefixRange(inodeKey(volume.record.id, file.ino)))]
  t.equal(fileKeys.length, 0, 'the deleted file has no block map heads')
  t.equal(historyOf(store, Table.Bmap).length, 3, 'its frozen first block joins history; the generation-2 block is freed')
  t.same(checkStore(store).problems, [], 'check still agrees')
})
