/* CloudFilm's configuration of the OHIF v3 viewer, served at /ohif/app-config.js instead of
 * the package's own (docs/ohif.md). One DICOMweb data source: CloudFilm's /dicomweb on the
 * same origin, reached with the staff session cookie. No third-party URL anywhere. */
(function () {
  // Chinese interface unless the user picked another language in OHIF's preferences
  // (i18next reads ?lng=, then its cookie, then localStorage, then the browser).
  try {
    if (!window.localStorage.getItem('i18nextLng')) {
      window.localStorage.setItem('i18nextLng', 'zh');
    }
  } catch (e) { /* storage blocked: the browser's language decides */ }
})();

window.config = {
  name: 'cloudfilm',
  routerBasename: '/ohif',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  // OHIF's "for investigational use only" dialog: not shown (CloudFilm's own terms apply)
  investigationalUseDialog: { option: 'never' },
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  groupEnabledModesFirst: true,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'production',
  defaultDataSourceName: 'dicomweb',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomweb',
      configuration: {
        friendlyName: 'CloudFilm 云胶片',
        name: 'cloudfilm',
        // same origin: the browser sends the staff session cookie; GETs need no CSRF proof
        wadoUriRoot: '/dicomweb',
        qidoRoot: '/dicomweb',
        wadoRoot: '/dicomweb',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video,pdf',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
