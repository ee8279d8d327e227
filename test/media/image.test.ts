/** image.json beside a recipe (loadImageSpec): what it may say, paths resolved against the recipe. */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadImageSpec } from '../../src/media/image.js';
import { tmpdir } from '../build/sources/tarfixture.js';

let dir: string;
beforeAll(async () => {
  dir = await tmpdir('sb-imagespec-');
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const spec = async (text: string | null) => {
  const f = path.join(dir, 'image.json');
  await fs.rm(f, { force: true });
  if (text !== null) await fs.writeFile(f, text);
  return loadImageSpec(dir);
};

describe('image.json', () => {
  it('gives layout, sizes, the command line and the UEFI boot program (relative to the recipe); no file is no settings', async () => {
    expect(await spec(null)).toEqual({});
    expect(await spec('{"layout":"nvme","sizeMiB":4096,"append":"console=ttyTCU0","efiBoot":"../L4T/bootloader/BOOTAA64.efi"}')).toEqual({
      layout: 'nvme',
      sizeMiB: 4096,
      append: 'console=ttyTCU0',
      efiBoot: path.resolve(dir, '../L4T/bootloader/BOOTAA64.efi'),
    });
  });

  it('refuses unknown keys, wrong types and bad JSON, naming the file', async () => {
    const f = path.join(dir, 'image.json');
    await expect(spec('{"efi":"x"}')).rejects.toMatchObject({ code: 'RECIPE', message: `${f}: unknown key efi` });
    await expect(spec('{"efiBoot":1}')).rejects.toMatchObject({ code: 'RECIPE', message: `${f}: efiBoot must be a string` });
    await expect(spec('{"resetEntry":"yes"}')).rejects.toMatchObject({ code: 'RECIPE', message: `${f}: resetEntry must be true or false` });
    expect(await spec('{"resetEntry":true}')).toEqual({ resetEntry: true });
    await expect(spec('{"layout":"usb"}')).rejects.toMatchObject({ code: 'RECIPE', message: `${f}: layout must be one of sd, nvme, custom` });
    await expect(spec('{"bootMiB":-1}')).rejects.toMatchObject({ code: 'RECIPE', message: `${f}: bootMiB must be a positive integer` });
    await expect(spec('{')).rejects.toMatchObject({ code: 'RECIPE', message: `${f}: not valid JSON` });
  });
});
