// WeChat JS-SDK without a third-party script: WeChat's in-app browser injects
// WeixinJSBridge, which jweixin.js wraps. We call it directly: 'preVerifyJSAPI' with the
// signature our server computed (/api/wechat/jssdk), then set what "Send to chat" shares.

function bridgeReady() {
  return new Promise((resolve, reject) => {
    if (window.WeixinJSBridge) { resolve(window.WeixinJSBridge); return; }
    const timer = setTimeout(() => reject(new Error('WeixinJSBridge not available')), 5000);
    document.addEventListener('WeixinJSBridgeReady', () => { clearTimeout(timer); resolve(window.WeixinJSBridge); }, { once: true });
  });
}

function invoke(bridge, name, args) {
  return new Promise((resolve, reject) => {
    bridge.invoke(name, args, (res) => {
      const msg = (res && res.err_msg) || '';
      if (/:ok$/.test(msg) || msg === '') resolve(res); else reject(new Error(`${name}: ${msg}`));
    });
  });
}

/** Sign this page for the JS-SDK (config from /api/wechat/jssdk). */
export async function configure(cfg) {
  const bridge = await bridgeReady();
  await invoke(bridge, 'preVerifyJSAPI', {
    verifyJsApiList: cfg.jsApiList, verifyAppId: cfg.appId, verifySignType: 'sha1',
    verifyTimestamp: String(cfg.timestamp), verifyNonceStr: cfg.nonceStr, verifySignature: cfg.signature,
  });
  return bridge;
}

/** What "Send to chat" (发送给朋友) sends from now on. */
export async function setShare(bridge, { title, desc, link, imgUrl }) {
  await invoke(bridge, 'updateAppMessageShareData', { title, desc, link, img_url: imgUrl || '' });
}

/** The URL WeChat signs: the page URL without its fragment. */
export function signedUrl(href) { return String(href).split('#')[0]; }
